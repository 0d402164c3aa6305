/* The one piece of logic the Ruby and Python bindings share.
 *
 * Compiled into each extension (never into libtrimalloc.so). It finds the
 * trimalloc core among the objects already loaded (dlsym(RTLD_DEFAULT)), never
 * dlopens it, and falls back to glibc (malloc_trim, mallinfo2) when the core is
 * not the process allocator. The bindings only convert types and map errors. */
#ifndef TRIMALLOC_BINDING_H
#define TRIMALLOC_BINDING_H

#include <stddef.h>
#include <stdint.h>

#include "../trimalloc.h"

typedef enum { TA_BACKEND_GLIBC = 0, TA_BACKEND_TRIMALLOC = 1 } ta_backend_t;

/* One stats field as the bindings see it. `present` is 0 for a field the
 * backend cannot measure (glibc has no `resident`): bindings leave it out,
 * never report it as 0. */
typedef struct ta_bind_field_s {
  const char *name;
  char type; /* 'u': uint64_t in v.u, 'd': double in v.d */
  int present;
  union {
    uint64_t u;
    double d;
  } v;
} ta_bind_field_t;

/* Number of fields in TRIMALLOC_STATS_FIELDS. */
#define TA_BIND_NFIELDS ta_bind_nfields()
size_t ta_bind_nfields(void);

/* Looks the core up once (idempotent, cheap after the first call). */
void ta_bind_init(void);

/* TA_BACKEND_TRIMALLOC when the process's malloc *is* trimalloc's (the address
 * dlsym(RTLD_DEFAULT, "malloc") returns is trimalloc_malloc's). */
ta_backend_t ta_bind_backend(void);
const char *ta_bind_backend_name(void); /* "trimalloc" or "glibc" */

/* The path of the loaded core (from dladdr), or NULL when not active. */
const char *ta_bind_loaded_path(void);

/* The core's version string when active, else NULL. */
const char *ta_bind_core_version(void);

/* Trims now. trimalloc: trimalloc_trim(). glibc: malloc_trim(0), and the bytes
 * released measured as the drop in RSS (/proc/self/statm) across the call,
 * clamped at 0. Counted (trims, trimmed_bytes, trim_ns) either way. */
uint64_t ta_bind_trim(void);

/* Rate-limited trim for hooks (GC, jobs, requests): a full trim (a job's memory
 * must not stay with an idle worker), at most once per min_interval, which is
 * what bounds page-fault churn. Trims only if at least
 * min_interval seconds passed since the last trim done through this function
 * (process-wide, monotonic clock) and, when min_free > 0, the allocator holds
 * at least min_free bytes that are free but resident (trimalloc: resident -
 * allocated; glibc: mallinfo2().fordblks). Returns the bytes released, or -1
 * when skipped (a skip for min_interval schedules a deferred trim, see below).
 * Thread-safe; concurrent callers: one trims, the others skip. */
int64_t ta_bind_trim_if_due(double min_interval, uint64_t min_free);

/* A trim skipped because the last one is too recent is not lost: it runs when
 * due, on a background thread the binding starts on first need (a worker that
 * goes idle after its last job must not keep that job's memory). This counts
 * the trims run that way. */
uint64_t ta_bind_deferred_trims(void);

/* For tests: moves the binding's clock (rate limits, deferred trims) forward
 * by `seconds`, and wakes the deferred-trim thread. */
void ta_bind_clock_advance(double seconds);

/* Free-but-resident bytes as used by ta_bind_trim_if_due. */
uint64_t ta_bind_free_bytes(void);

/* Fills out[0 .. ta_bind_nfields()-1] in field-list order. Returns 0. */
int ta_bind_stats(ta_bind_field_t *out);

/* The process's resident set size in bytes (from /proc/self/statm), 0 if
 * unreadable. Does not allocate. */
uint64_t ta_bind_rss(void);

/* Launcher. Prepends `lib` to LD_PRELOAD (keeping what is there, not adding it
 * twice), sets PYTHONMALLOC=malloc when pythonmalloc is non-zero, and execvp's
 * argv[0] with argv. Returns only on failure, with errno set. */
int ta_bind_exec(const char *lib, char *const argv[], int pythonmalloc);

/* `preload`: if trimalloc is not the process allocator and the guard variable
 * TRIMALLOC_PRELOAD_GUARD is unset, sets the guard, prepends lib to LD_PRELOAD
 * and re-executes /proc/self/exe with the argv read from /proc/self/cmdline
 * (same pid, same command line). Returns:
 *   0  already active (nothing to do),
 *   1  the guard was set but trimalloc is still not active (the re-exec did
 *      not take: warn once),
 *  -1  the re-exec failed (errno set; the caller warns and continues). */
int ta_bind_preload(const char *lib, int pythonmalloc);

#define TA_BIND_GUARD_ENV "TRIMALLOC_PRELOAD_GUARD"

#endif
