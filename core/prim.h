/* Every OS call the core makes, behind one small interface (core/prim/).
 * Functions that can fail return 0 or an errno value, and leave errno as it
 * was (a successful malloc must not change it). None allocates. */
#ifndef TA_PRIM_H
#define TA_PRIM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

/* The OS page size, read at run time (4K, 16K and 64K kernels). */
size_t ta_prim_page_size(void);

/* Maps `size` bytes of zeroed read-write memory aligned to `align`.
 * Pre: size and align are multiples of the page size; align is a power of two. */
int ta_prim_map(size_t size, size_t align, void **out);

/* Pre: p and size as returned by / passed to ta_prim_map (or a page-aligned part). */
int ta_prim_unmap(void *p, size_t size);

/* Makes [p, p + size) read-write (access) or inaccessible (PROT_NONE: any
 * access faults). Fails (ENOMEM) when the process has too many mappings.
 * Pre: p and size page-aligned, inside mappings made by ta_prim_map. */
int ta_prim_protect(void *p, size_t size, bool access);

/* Returns the pages to the OS now (RSS drops); they read as zero afterwards.
 * Pre: p and size page-aligned. */
int ta_prim_purge(void *p, size_t size);

/* Resizes a mapping made by ta_prim_map, keeping its alignment: in place when
 * possible, else moved (without copying) to a new aligned address.
 * Pre: sizes page multiples; align a power of two >= page size. */
int ta_prim_remap(void *p, size_t old_size, size_t new_size, size_t align, void **out);

uint64_t ta_prim_clock_ns(void); /* monotonic */
uint64_t ta_prim_clock_ms(void); /* monotonic, coarse (cheap) */
uint64_t ta_prim_thread_cpu_ns(void); /* the calling thread's CPU time (a system call on x86-64) */

/* Writes to stderr, without allocating. */
void ta_prim_write_err(const char *s, size_t n);

/* getenv without allocating; NULL when unset. */
const char *ta_prim_getenv(const char *name);

/* 64 random bits from the kernel (getrandom; AT_RANDOM's second half if
 * that fails), mixed with the clock. */
uint64_t ta_prim_random(void);

/* The size of a transparent huge page when the kernel gives them to a range
 * that asks (THP "always" or "madvise"), else 0. Read once. */
size_t ta_prim_hugepage_size(void);

/* Asks for transparent huge pages on [p, p + size) (MADV_HUGEPAGE). Keeps
 * errno. Pre: p and size page-aligned. */
void ta_prim_hugepage(void *p, size_t size);

/* Asks the kernel to fault in [p, p + size) now, in one call (Linux 5.14+
 * MADV_POPULATE_WRITE): true if it did. False (nothing done) where that is
 * not supported or the kernel refused (no memory: then the pages fault in
 * one by one when written, as without it). Keeps errno.
 * Pre: p and size page-aligned, the range mapped read-write. */
bool ta_prim_populate(void *p, size_t size);

/* Which pages of [p, p + size) are resident (mincore): bit 0 of vec[i] for
 * page i. Keeps errno. Pre: p and size page-aligned, vec has size / page
 * size entries. */
int ta_prim_resident(void *p, size_t size, unsigned char *vec);

/* The CPU the calling thread runs on (0 if unknown), and the number of CPUs. */
unsigned ta_prim_cpu(void);
unsigned ta_prim_ncpus(void);

/* The calling thread's kernel id, and whether the thread of that id in this
 * process has exited and been released (a process with no other thread left
 * counts as single-threaded again, e.g. for unshare(CLONE_NEWUSER)). */
int ta_prim_tid(void);
int ta_prim_thread_gone(int tid);
/* Sleeps while *word == expected (or until woken; spurious returns allowed);
 * wakes one sleeper on word. Process-private. */
void ta_prim_futex_wait(_Atomic uint32_t *word, uint32_t expected);
void ta_prim_futex_wake(_Atomic uint32_t *word);

/* Starts fn(arg) on a new thread with every signal blocked (a process's
 * signals must never land on the allocator's thread), named `name`. fn
 * calls ta_prim_thread_defaults() first. */
int ta_prim_thread_start(void *(*fn)(void *), void *arg, const char *name, pthread_t *out);

/* On the allocator's own thread, at its start: default scheduling
 * (SCHED_OTHER, priority 0) and the CPUs the process could use when
 * trimalloc started (ta_prim_affinity_save), whatever the thread that
 * started it had (a real-time policy, one pinned CPU). Where the kernel
 * refuses (leaving SCHED_IDLE needs CAP_SYS_NICE), the thread keeps what it
 * inherited. A seccomp filter cannot be shed: a thread inherits its
 * creator's, and no call removes one. Keeps errno. */
void ta_prim_thread_defaults(void);
void ta_prim_affinity_save(void); /* at init: the process's CPUs, before the program pins threads */

/* For the heap profiler's dumps: the real-time clock (ns since the epoch),
 * the process id, a file created (truncated) for writing (0 or an errno
 * value; *fd), closed, removed, and the executable's path (readlink of
 * /proc/self/exe; "" if unknown). None allocates; errno is kept. */
int64_t ta_prim_clock_real_ns(void);
int ta_prim_pid(void);
int ta_prim_create(const char *path, int *fd);
int ta_prim_close(int fd);
int ta_prim_remove(const char *path);
size_t ta_prim_exe_path(char *buf, size_t size);

#endif
