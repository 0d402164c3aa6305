/* trimalloc: a memory allocator that gives memory back.
 *
 * Public C API. The preload library (libtrimalloc.so) exports these names and
 * the standard ones (malloc, free, ...) as aliases of them. Everything else in
 * the library is hidden. */
#ifndef TRIMALLOC_H
#define TRIMALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRIMALLOC_VERSION "0.1.0"
#define TRIMALLOC_STATS_VERSION 2

#if defined(__GNUC__)
#define TRIMALLOC_API __attribute__((visibility("default")))
#else
#define TRIMALLOC_API
#endif

/* The stats field list, kept in this one place. The struct, the JSON, and the
 * Ruby and Python bindings' hashes are all generated from it, so they cannot
 * drift. X(type, name, unit, description); type is uint64_t or double. */
#define TRIMALLOC_STATS_FIELDS(X)                                                        \
  X(uint64_t, allocated, "bytes", "bytes in live blocks (usable sizes)")                 \
  X(uint64_t, active, "bytes", "bytes of pages holding at least one live block")         \
  X(uint64_t, resident, "bytes", "bytes the allocator holds committed (not purged)")     \
  X(uint64_t, mapped, "bytes", "address space mapped from the OS")                       \
  X(uint64_t, metadata, "bytes", "the allocator's own bookkeeping")                      \
  X(uint64_t, purged, "bytes", "mapped but returned to the OS (retained address space)") \
  X(double, fragmentation, "ratio", "1 - allocated / resident")                          \
  X(uint64_t, peak_active, "bytes", "high-water mark of active (pages holding a live block, and huge blocks)") \
  X(uint64_t, allocations, "count", "blocks handed out (counted when a thread cache refills)") \
  X(uint64_t, frees, "count", "allocations - live blocks (blocks in thread caches count as live)") \
  X(uint64_t, huge_allocations, "count", "blocks that got their own mapping")           \
  X(uint64_t, segments, "count", "segments mapped now")                                  \
  X(uint64_t, heaps, "count", "thread caches registered (one per live thread that allocated)") \
  X(uint64_t, purges, "count", "ranges returned to the OS by the delayed purge")         \
  X(uint64_t, purged_bytes, "bytes", "bytes returned to the OS by the delayed purge")    \
  X(uint64_t, trims, "count", "calls to trimalloc_trim or malloc_trim")                  \
  X(uint64_t, trimmed_bytes, "bytes", "bytes returned to the OS by trims")               \
  X(uint64_t, trim_ns, "ns", "time spent trimming")                                      \
  X(uint64_t, arenas, "count", "shared arenas in use")                                   \
  X(uint64_t, tcache_bytes, "bytes", "free blocks held in thread caches now")            \
  X(uint64_t, dirty, "bytes", "free and still resident: what a trim would return now (transfer caches counted at their blocks' size)") \
  X(uint64_t, background, "bool", "1 while the background purger thread runs")             \
  X(uint64_t, prof_samples, "count", "heap profiler: sampled blocks live now")            \
  X(uint64_t, prof_sampled, "count", "heap profiler: samples taken since the process started") \
  X(uint64_t, prof_live_bytes, "bytes", "heap profiler: estimated live bytes (sum of the live samples' weights)") \
  X(uint64_t, prof_meta_bytes, "bytes", "heap profiler: its own metadata (samples, stacks, names)") \
  X(uint64_t, prof_dropped, "count", "heap profiler: samples not recorded (metadata budget full)")

typedef struct trimalloc_stats_s {
  uint32_t version; /* TRIMALLOC_STATS_VERSION */
  uint32_t size;    /* sizeof(trimalloc_stats_t) as filled */
#define TRIMALLOC_X_FIELD(type, name, unit, doc) type name;
  TRIMALLOC_STATS_FIELDS(TRIMALLOC_X_FIELD)
#undef TRIMALLOC_X_FIELD
} trimalloc_stats_t;

/* The allocation functions under the library's own names; C and POSIX
 * semantics (NULL and errno = ENOMEM on failure, EINVAL for bad alignments). */
TRIMALLOC_API void *trimalloc_malloc(size_t size);
TRIMALLOC_API void *trimalloc_calloc(size_t count, size_t size);
TRIMALLOC_API void *trimalloc_realloc(void *p, size_t size);
TRIMALLOC_API void *trimalloc_reallocarray(void *p, size_t count, size_t size);
TRIMALLOC_API void trimalloc_free(void *p);
/* C23's free_sized (and C++'s sized delete, which the preload library
 * replaces): n must be the size p was allocated (or realloc'ed) with; one
 * that malloc could not have answered with p is reported, and aborts. */
TRIMALLOC_API void trimalloc_free_sized(void *p, size_t n);
TRIMALLOC_API int trimalloc_posix_memalign(void **out, size_t alignment, size_t size);
TRIMALLOC_API void *trimalloc_aligned_alloc(size_t alignment, size_t size);
TRIMALLOC_API void *trimalloc_memalign(size_t alignment, size_t size);
TRIMALLOC_API void *trimalloc_valloc(size_t size);
TRIMALLOC_API void *trimalloc_pvalloc(size_t size);
TRIMALLOC_API size_t trimalloc_malloc_usable_size(const void *p);

/* Returns every free OS page of every arena to the OS now (MADV_DONTNEED),
 * including free pages inside slabs that still hold live blocks, after
 * flushing the caller's thread cache; asks the other threads to flush theirs
 * at their next slow path; unmaps empty segments. Returns the number of bytes
 * released. Its cost is proportional to slabs and spans, not to free blocks;
 * with nothing to release it costs well under a microsecond. Thread-safe. */
TRIMALLOC_API size_t trimalloc_trim(void);

/* The trim for hooks that run often (after each GC, job or request): returns
 * only what has been free for the current purge delay (what the background
 * purger would return next), so trimming does not turn into page-fault
 * churn. Returns the bytes released. */
TRIMALLOC_API size_t trimalloc_trim_idle(void);

/* glibc-compatible: trims, returns 1 if memory was released, 0 otherwise. */
TRIMALLOC_API int trimalloc_malloc_trim(size_t pad);

/* Fills *out (at most `size` bytes of it: pass sizeof(trimalloc_stats_t)).
 * Returns 0, or EINVAL when out is NULL or size is too small for the header.
 * Takes no lock that malloc or free need. Thread-safe. */
TRIMALLOC_API int trimalloc_stats(trimalloc_stats_t *out, size_t size);

/* Writes the stats as one JSON object into buf (NUL-terminated, truncated to
 * size). Returns the length the full text needs, excluding the NUL, like
 * snprintf. Does not allocate. */
TRIMALLOC_API size_t trimalloc_stats_json(char *buf, size_t size);

/* Options: purge_delay_ms, unmap_delay_ms, arenas, tcache_bytes, tcache_total, background,
 * thp, show_stats, verbose, and the heap profiler's prof, prof_interval,
 * prof_max_bytes, prof_growth, prof_at_exit, prof_keep, prof_unwind (the table
 * in options.c; trimalloc_option_name lists them). Each is read once from TRIMALLOC_<NAME upper-cased> at
 * start; a bad value warns once and keeps the default. get/set return 0, or EINVAL for an unknown name (or a
 * NULL pointer) and ERANGE for a value out of the option's range. Setting
 * background to 0 stops a running purger thread before set returns; set back
 * to 1, the purger starts again when enough is left to purge. */
TRIMALLOC_API int trimalloc_option_get(const char *name, long long *value);
TRIMALLOC_API int trimalloc_option_set(const char *name, long long value);

/* The name of the i-th option (0-based), or NULL past the last one. */
TRIMALLOC_API const char *trimalloc_option_name(size_t i);

TRIMALLOC_API const char *trimalloc_version(void);

/* ---- Heap profiler ----
 * Sampling: per-byte Poisson, mean interval R bytes: a block of Z < R bytes
 * is sampled with probability p = 1 - e^(-Z/R) and weighs Z/p bytes and 1/p
 * objects; Z >= R always, weight 1. Samples, their stacks and names live in
 * the profiler's own mappings (prof_max_bytes); a sampled block's free
 * removes it. 0 for interval keeps the current one (TRIMALLOC_PROF_INTERVAL
 * or 512 KiB). Returns 0, or EINVAL (interval above 1 GiB). */
TRIMALLOC_API int trimalloc_prof_start(size_t interval);
TRIMALLOC_API int trimalloc_prof_stop(void);        /* live samples stay; their frees remove them */
TRIMALLOC_API size_t trimalloc_prof_interval(void); /* 0 while sampling is off */
#define TRIMALLOC_PROF_LIVE 0
#define TRIMALLOC_PROF_PEAK 1
/* Writes a gzipped pprof profile.proto of the live set (or of the peak set). path NULL:
 * <prefix>.<pid>.<seq>.<reason>.pb.gz (reason "dump" or "peak"; prefix from
 * TRIMALLOC_PROF_PREFIX, default /tmp/trimalloc). The path written is copied into
 * written[size] (NUL-terminated) when written is not NULL. Returns 0 or an errno value.
 * Encodes and writes on the calling thread outside every allocator lock. */
TRIMALLOC_API int trimalloc_prof_dump(const char *path, int kind, char *written, size_t size);
TRIMALLOC_API void trimalloc_prof_reset_peak(void);
/* This thread's tag (job class, task name, route): a pprof label "tag" on its samples.
 * Copied (at most 63 bytes); NULL or "" clears. Does not allocate. */
TRIMALLOC_API void trimalloc_prof_set_tag(const char *tag);
/* Interpreter frames. fn is called on the allocating thread inside a sample only, with the
 * profiler's re-entry guard set; it must not allocate, block, or take any lock the program
 * may hold; it writes up to max frames, leaf first: keys[i] (non-zero, the binding's
 * identity of a function, e.g. a code object's address) and lines[i], and returns how many.
 * eval_fn is an address inside the interpreter's eval function (Python
 * _PyEval_EvalFrameDefault, Ruby rb_vm_exec): a sample keeps the native frames from the
 * leaf up to (not including) the first one inside that function, then the interpreter
 * frames as their callers. fn NULL unregisters. Returns 0 or EINVAL. Not called inside
 * malloc itself (it may use dladdr). */
typedef int (*trimalloc_prof_frames_fn)(uint64_t *keys, int32_t *lines, int max);
TRIMALLOC_API int trimalloc_prof_set_frames_hook(trimalloc_prof_frames_fn fn, const void *eval_fn);
/* Names an interpreter frame key: name ("Class#method", "module.function") and file are
 * copied into the profiler's own metadata (no malloc), so it is safe inside the hook.
 * The first name given for a key stays. Returns 0, EINVAL (key 0 or name NULL) or ENOMEM
 * (budget full). A key never named is shown as "[interpreter frame 0x<key>]". */
TRIMALLOC_API int trimalloc_prof_name_frame(uint64_t key, const char *name, const char *file);

/* Checks the invariants of every arena (bins, slabs, free bitmaps, OS-page
 * counts, free spans, segments) and of the calling thread's cache; returns 1
 * if they hold. Walks everything: for tests and debugging, not for
 * production paths. */
TRIMALLOC_API int trimalloc_check(void);

#ifdef __cplusplus
}
#endif
#endif
