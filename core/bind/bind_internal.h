/* What the core/bind/ files share beyond binding.h. */
#ifndef TRIMALLOC_BIND_INTERNAL_H
#define TRIMALLOC_BIND_INTERNAL_H

#include "binding.h"

/* bind_backend.c: CLOCK_MONOTONIC in ns (the real clock, no test offset). */
uint64_t ta_bind_mono_ns(void);

/* bind_backend.c: what the host's own trim would give back now (ta_bind_set_host's
 * free_bytes; 0 without one), for the policy's free-bytes figure. */
uint64_t ta_bind_host_free(void);

/* bind_refault.c: the process's CPU time in ns (with the test offset), the
 * cost of a fault (measured once; ta_bind_test_fault_ns's when set), and the
 * price of returning free_bytes: pages times that cost, in ns of CPU. */
uint64_t ta_bind_cpu_ns(void);
double ta_bind_fault_ns(void);
double ta_bind_refault_price(uint64_t free_bytes);

/* bind_policy.c, for bind_trimmer.c: the decision (the rate limit, then the
 * free-bytes guard when min_free > 0, then the refault budget when share > 0
 * and min_free >= 0; a skip for the first or the last schedules the deferred
 * trim), and a budgeted trimmer's event (the idle trim waits for quiet). */
int ta_bind_policy_due(double min_interval, int64_t min_free, double share, ta_bind_skip_t *why);
void ta_bind_policy_event(void);

/* bind_backend.c: 1 on the policy's own thread (deferred and idle trims;
 * bind_policy.c marks it when it starts), which holds no interpreter lock,
 * for the host functions (ta_bind_set_host). */
void ta_bind_mark_policy_thread(void);
int ta_bind_on_policy_thread(void);

/* bind_inflate.c: gzip members (RFC 1952, concatenated members too) with
 * deflate (RFC 1951) inside. *out (malloc'ed, the caller frees) gets the
 * data, at most `max` bytes. 0, or -1 with *why a static phrase. */
int ta_bind_gunzip(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen,
                   const char **why);
uint32_t ta_bind_crc32(const uint8_t *p, size_t n);

/* bind_prof.c: a profile read into call paths, summed by (frames, tag).
 * Frames are interned texts ("function (file:line)"); a path's frames are
 * leaf first; values in the file's sample-type order. */
#define TA_BIND_PROF_MAX_TYPES 64
#define TA_BIND_PROF_MAX_DEPTH 4096 /* frames kept per sample, leaf first (a hostile file could name millions) */
typedef struct {
  size_t frame0, nframes; /* in path_frames */
  int64_t tag;            /* a frames[] index holding the tag text, or -1 */
  size_t value0;          /* in values, ntypes of them */
} ta_bind_prof_path_t;

typedef struct {
  char *path;      /* the file, for messages */
  char err[768];   /* "path: problem" */
  int failed;      /* the errno value of the first failure, 0 while none */
  size_t ntypes;
  char *type_names[TA_BIND_PROF_MAX_TYPES], *type_units[TA_BIND_PROF_MAX_TYPES];
  int64_t totals[TA_BIND_PROF_MAX_TYPES];
  char *default_type, *period_type, *reason; /* or NULL */
  int64_t period, period_type_index;
  int64_t exact_allocated; /* the comment exact_allocated=, when has_exact */
  int has_exact;
  size_t nsamples;
  char **frames; /* "function (file:line)", "function (object)", for the table and tooltips */
  char **names;  /* the rows' and collapsed stacks' text: "function (file:line)" or "function" */
  unsigned char *frame_interp; /* 1: an interpreter frame (no mapping) */
  size_t nframes, cap_frames, cap_frames2, cap_names;
  uint32_t *frame_slots;
  size_t frame_mask;
  ta_bind_prof_path_t *paths;
  size_t npaths, cap_paths;
  uint32_t *path_frames;
  size_t npath_frames, cap_path_frames;
  int64_t *values;
  size_t nvalues, cap_values;
  uint32_t *path_slots;
  size_t path_mask;
} ta_bind_prof_t;

/* 0, or -1 with p->err set (then still call ta_bind_prof_free). */
int ta_bind_prof_load(const char *path, ta_bind_prof_t *p);
void ta_bind_prof_free(ta_bind_prof_t *p);
/* The index of sample type `name` (NULL: inuse_space, else the file's
 * default, else the last), or -1 with p->err set. */
int ta_bind_prof_type(ta_bind_prof_t *p, const char *name);
/* Copies p->err into err and sets errno (EINVAL for contents). */
void ta_bind_prof_error(ta_bind_prof_t *p, char *err, size_t errlen);
/* A growing string; oom set (and further output dropped) when out of memory. */
typedef struct {
  char *s;
  size_t len, cap;
  int oom;
} ta_bind_sb_t;
__attribute__((format(printf, 2, 3))) void ta_bind_sb_printf(ta_bind_sb_t *b, const char *fmt, ...);
void ta_bind_sb_put(ta_bind_sb_t *b, const char *s, size_t n); /* n bytes as they are */
/* 1536 -> "1.5 KiB"; below 1 KiB "N B". */
const char *ta_bind_human(char *buf, size_t size, int64_t v);
/* A stable sort with a context argument; 0, or -1 when out of memory. */
int ta_bind_sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *, void *), void *ctx);
/* Writes all of s to fd (a file, a pipe); 0 or -1 with errno. */
int ta_bind_write_all(int fd, const char *s, size_t n);

#endif
