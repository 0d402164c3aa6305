/* The one piece of logic the Ruby and Python bindings share.
 *
 * Compiled into each extension (never into libtrimalloc.so), from these files:
 *   bind_backend.c  finding the core, or driving glibc: trim, stats, free bytes
 *   bind_policy.c   when to trim: the rate limit, the trimmer (every N events,
 *                   min_free), coalescing, deferred trims, the clock;
 *                   bind_refault.c the refault budget's fault cost and CPU clock;
 *                   bind_trimmer.c a hook's trimmer over that policy
 *   bind_prof.c     reading heap profiles (profile.proto) into call paths;
 *                   bind_inflate.c its gunzip; bind_prof_top.c the top-N rows
 *                   and table; bind_flame.c the SVG flame graph and collapsed stacks
 *   bind_launch.c   the launcher (exec with LD_PRELOAD) and the preload re-exec
 *   bind_sampler.c  the core's heap profiler (start, stop, dump, tags), found
 *                   at run time
 *   bind_facts.c    what both languages tell their users: hook defaults,
 *                   counter names, result codes, the purger's state
 *   bind_frames.c   what the two interpreters' frame walkers share: the
 *                   hook's registration, the table of keys, its counters, its cost
 *   bind_jobs.c     the work the bindings run without their interpreter lock
 *   bind_gc_hook.c  a GC hook's policy and counters (Ruby's Trimalloc::GC)
 *   bind_pymalloc.c pymalloc's empty and sparse pools, given back by every
 *                   trim (Python's)
 * It finds the trimalloc core among the objects already loaded
 * (dlsym(RTLD_DEFAULT)), never dlopens it, and falls back to glibc when the core
 * is not the process allocator. The bindings only convert types and map errors.
 *
 * Nothing here takes the GVL or the GIL, or calls back into an interpreter,
 * but through the functions a binding hands over (ta_bind_set_host's, and
 * bind_pymalloc.c's host, whose lock takes the GIL on the policy's thread):
 * the bindings call the trimming functions with it released. */
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
  /* 'u': uint64_t in v.u, 'i': int64_t in v.i, 'd': double in v.d, 'b': a
   * bool in v.u, 'n': a setting that is off (None / nil) */
  char type;
  int present;
  union {
    uint64_t u;
    int64_t i;
    double d;
  } v;
} ta_bind_field_t;

/* ---- bind_backend.c ---- */

/* Number of fields in TRIMALLOC_STATS_FIELDS. */
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

/* The background purger in this process, in words (`trimalloc info`): none
 * (glibc), running, off (the core's background option is 0), or not started.
 * Asks the core; never reads the environment itself. */
const char *ta_bind_purger_state(void);

/* Trims now. trimalloc: trimalloc_trim(). glibc: malloc_trim(0), and the bytes
 * released measured as the drop in RSS (/proc/self/statm) across the call,
 * clamped at 0. Counted (trims, trimmed_bytes, trim_ns) either way. May take
 * milliseconds: call it without the GVL/GIL. */
uint64_t ta_bind_trim(void);

/* The host language's own free memory, given back by every trim: the Python
 * binding registers pymalloc's empty pools (bind_pymalloc.c).
 * `trim` runs first in every ta_bind_trim (each hook's trim, the policy
 * thread's deferred and idle trims, an explicit trim()) and returns the bytes
 * it released, added to the allocator's; `free_bytes` (what it could release
 * now) is added to the policy's free-bytes figure (not to ta_bind_free_known,
 * which stays the allocator's), so the free-bytes guard and the refault
 * budget price it. Both are called with no lock of core/bind
 * held, and told where: policy_thread 1 on the policy's own thread, which
 * holds no interpreter lock (the host takes it); 0 on the host's own thread
 * that called into core/bind (holding its interpreter lock, or having
 * released it for a job: the host knows which). NULL, NULL: none (Ruby). */
void ta_bind_set_host(uint64_t (*trim)(int policy_thread), uint64_t (*free_bytes)(int policy_thread));

/* Free-but-resident bytes: what a trim could return now.
 *   trimalloc with core v2: the core's `dirty` counter (exact, O(1));
 *   older core: resident - allocated;
 *   glibc: mallinfo2().fordblks (free bytes in glibc's heaps, whether or not
 *   their pages were already returned; a walk over every arena), or
 *   mallinfo().fordblks before glibc 2.33.
 * ta_bind_free_known returns 0 when no source can tell (then *out = 0). */
int ta_bind_free_known(uint64_t *out);
uint64_t ta_bind_free_bytes(void);
enum { TA_FREE_UNKNOWN = 0, TA_FREE_DIRTY, TA_FREE_RESIDENT, TA_FREE_MALLINFO2, TA_FREE_MALLINFO };
int ta_bind_free_source(void);

/* Fills out[0 .. ta_bind_nfields()-1] in field-list order. Returns 0. */
int ta_bind_stats(ta_bind_field_t *out);

/* The process's resident set size in bytes (from /proc/self/statm), 0 if
 * unreadable. Does not allocate. */
uint64_t ta_bind_rss(void);

/* ---- bind_policy.c: when to trim ----
 *
 * Every hook (GC, job, request, out-of-band, block end) goes through one
 * policy, the same in both languages:
 *   - an event (a GC, a finished job or request) makes a trim due when
 *     `every` events have passed since this trimmer's last trim (every > 0),
 *     or when at least `min_free` bytes are free but resident (min_free >= 0;
 *     0 means "after every event");
 *   - never twice within `min_interval` seconds (process-wide, shared by all
 *     hooks); a trim skipped only for that runs when due, on a background
 *     thread, so an idle worker does not keep its last job's memory;
 *   - a trim requested while another runs is coalesced into it (the caller
 *     returns at once; nothing is queued);
 *   - the free-bytes figure is read only when the rate limit would allow a
 *     trim, and at most once per TA_BIND_FREE_SAMPLE_NS: a decision costs one
 *     clock read and a few atomics, whatever the backend;
 *   - the refault budget (a trimmer with refault_share > 0; bind_refault.c):
 *     a trim its free-bytes trigger asks for runs only when the pages free,
 *     priced at what a page faulted back in costs (fault_ns, measured once
 *     per process: MADV_DONTNEED and a write, 3 x 32 pages), come to at most
 *     refault_share of the CPU time the process spent since the last trim:
 *         free_bytes / page * fault_ns <= refault_share * cpu_since_last_trim
 *     The next jobs fault back what they use, so this bounds the share of
 *     CPU spent refaulting. A job that frees little, or faults that are
 *     cheap, trim after every job; big frees on a VM whose faults are dear
 *     wait until the process has worked enough. min_interval stays a floor
 *     under it. A trim the budget holds back runs when the worker goes idle,
 *     on the background thread: when no trimmer event came for
 *     TA_BIND_IDLE_NS (and min_interval after the last trim) and the process
 *     spent at most TA_BIND_IDLE_CPU of that time on a CPU, it trims without
 *     the budget (an idle worker refaults nothing until its next job); a
 *     process that did (in a long job) is priced again, and looked at again
 *     TA_BIND_IDLE_NS later. It counts CPU time, not the clock: on a loaded
 *     machine a job takes longer but costs the same, and a one-second limit
 *     let a trim through after nearly every Celery task there (0.85-0.92 a
 *     task, 6-7k faults each) where refault_share 0.25 with min_interval 0
 *     let 0.15 through (1.5k faults; bench/results-2026-12-06-celery-refault.txt).
 *     On for the job hooks by default (0.1, bind_facts.c), off elsewhere.
 *     A count-triggered trim (`every`) and the GC hooks' trims (ta_bind_due,
 *     ta_bind_trim_if_due) are not priced. */

#define TA_BIND_FREE_SAMPLE_NS 10000000ull /* 10 ms */
#define TA_BIND_IDLE_NS 1000000000ull      /* 1 s without a trimmer event ... */
#define TA_BIND_IDLE_CPU 0.05              /* ... and at most 5% of it on a CPU: idle */

/* Why a trim did not run (the return value of the trimming calls is the
 * bytes released, or -1 with *why set). */
typedef enum {
  TA_SKIP_NONE = 0,
  TA_SKIP_NOT_DUE,   /* neither `every` nor `min_free` asked for one */
  TA_SKIP_INTERVAL,  /* within min_interval of the last trim (deferred) */
  TA_SKIP_FREE,      /* less than min_free bytes free but resident */
  TA_SKIP_COALESCED, /* another trim was running */
  TA_SKIP_REFAULT,   /* over the refault budget (deferred to the next idle time) */
} ta_bind_skip_t;

/* Rate-limited trim: a full trim when at least min_interval seconds passed
 * since the last trim through the policy and, when min_free > 0, at least
 * min_free bytes are free but resident. Returns bytes released, or -1. */
int64_t ta_bind_trim_if_due(double min_interval, uint64_t min_free);
int64_t ta_bind_trim_if_due2(double min_interval, uint64_t min_free, ta_bind_skip_t *why);

/* The same in two steps, for a binding that decides with its interpreter
 * lock held (cheap) and releases it only to trim: ta_bind_due -> 1 when a
 * trim should run now (a skip for min_interval schedules the deferred trim),
 * then ta_bind_run_trim (the trim, or -1 when coalesced into a running one). */
int ta_bind_due(double min_interval, uint64_t min_free, ta_bind_skip_t *why);
int64_t ta_bind_run_trim(ta_bind_skip_t *why);

/* ta_bind_run_trim for a trim the program asked for at a quiet moment
 * (Ruby's GC.start): when it was coalesced into a running trim, which may
 * have started before this memory was freed, waits for that one to end
 * (polling each millisecond, at most wait_ms, or until *stop is set by the
 * interpreter's interrupt) and trims after it. Without the GVL/GIL. */
int64_t ta_bind_run_trim_after(int wait_ms, const _Atomic int *stop);

/* A trim the caller cannot run on its own thread now (Ruby: a postponed job
 * with an interrupt pending may not release the GVL), run as soon as
 * possible by the policy's background thread, like a deferred trim. */
void ta_bind_trim_soon(void);

/* A hook's policy and its counters. Plain data: the bindings embed it in
 * their objects (a Ruby TypedData, a Python object) and call
 * ta_bind_trimmer_event from any thread. */
typedef struct ta_bind_trimmer_s {
  uint64_t every;      /* 0: no count trigger */
  int64_t min_free;    /* -1: no free-bytes trigger; 0: every event */
  double min_interval; /* seconds */
  double refault_share; /* 0: no refault budget */
  _Atomic uint64_t events, since, trims, trimmed_bytes, skipped, coalesced;
  _Atomic uint64_t refault_skips; /* skipped (and deferred) by the refault budget */
} ta_bind_trimmer_t;

/* Returns 0, or EINVAL when nothing could ever trigger (every == 0 and
 * min_free < 0) or min_interval is negative or not a number. refault_share
 * starts at 0 (no budget). */
int ta_bind_trimmer_init(ta_bind_trimmer_t *t, uint64_t every, int64_t min_free, double min_interval);

/* Sets the refault budget: the share of the process's CPU time that the
 * refaults of this trimmer's trims may cost (0: no budget). EINVAL when
 * negative or not finite. Call before the trimmer is shared. */
int ta_bind_trimmer_set_share(ta_bind_trimmer_t *t, double refault_share);

/* One event (a GC, a job, a request ended). Returns the bytes released, or
 * -1 (why, if not NULL, says why). Call it without the GVL/GIL. */
int64_t ta_bind_trimmer_event(ta_bind_trimmer_t *t, ta_bind_skip_t *why);

/* The same in two steps (see ta_bind_due): decide (counts the event; a few
 * atomics and at most one clock read, any thread, any lock held), then run
 * the trim without the interpreter lock. */
int ta_bind_trimmer_decide(ta_bind_trimmer_t *t, ta_bind_skip_t *why);
int64_t ta_bind_trimmer_run(ta_bind_trimmer_t *t, ta_bind_skip_t *why);

/* Process-wide counters of the policy. */
typedef struct {
  int pending;        /* a deferred trim is scheduled or running */
  int busy;           /* a trim is running */
  uint64_t deferred;  /* trims run by the background thread when due */
  uint64_t coalesced; /* requests folded into a running trim */
  uint64_t free_reads;/* free-bytes figures read (the rest came from the sample) */
  uint64_t refault_skips; /* trims held back by the refault budget */
  uint64_t idle_trims;    /* of `deferred`: the ones run because the worker went idle */
  double fault_ns;        /* the cost of a fault the budget uses (measured on first read) */
} ta_bind_policy_stats_t;
void ta_bind_policy_stats(ta_bind_policy_stats_t *out);
uint64_t ta_bind_deferred_trims(void);

/* For tests: moves the policy's clock (rate limit, deferred trims) forward
 * by `seconds`, and wakes the deferred-trim thread. */
void ta_bind_clock_advance(double seconds);

/* For tests: moves the refault budget's CPU clock forward by `seconds`;
 * sets the cost of a fault (ns > 0; <= 0: back to the measured one); pins
 * the free-bytes figure every policy decision reads (bytes >= 0; -1: the
 * backend's again). */
void ta_bind_cpu_advance(double seconds);
void ta_bind_test_fault_ns(double ns);
void ta_bind_test_free_bytes(int64_t bytes);

/* For tests: a gate in the next trim, to show that the thread that trims
 * holds no interpreter lock. ta_bind_test_gate(1) arms it; the next trim
 * through the policy then waits (up to 20 s) until ta_bind_test_gate_open().
 * State: 0 off, 1 armed, 2 a trim waits at the gate, 3 opened, 4 timed out. */
void ta_bind_test_gate(int arm);
void ta_bind_test_gate_open(void);
int ta_bind_test_gate_state(void);

/* ---- bind_prof.c, bind_prof_top.c, bind_flame.c: reading profiles ----
 *
 * Profiles as the core writes them (trimalloc_prof_dump), or any pprof
 * profile.proto, gzipped or plain. Untrusted input: a truncated, non-gzip,
 * non-proto or hostile file gives -1 and a one-line message naming the file
 * and the problem in err, with errno EINVAL (bad contents or arguments) or
 * the system's errno (the file could not be read or written). */
typedef struct {
  int64_t inuse_space, inuse_objects, alloc_space, alloc_objects;
  size_t nframes;
  const char *const *frames; /* leaf first: "function (file:line)", or "function" */
  const char *tag;           /* the sample's "tag" label, or NULL */
} ta_bind_prof_row_t;
/* Reads a profile (profile.proto, gzipped or plain). Calls row() for the n call paths
 * (same frames and same tag, summed) with the most `order` ("inuse_space" when NULL; any
 * of the four sample types), largest first; n 0: all. Returns 0, or -1 with a one-line
 * message naming the file and the problem in err. */
int ta_bind_prof_top(const char *path, const char *order, size_t n,
                     void (*row)(void *arg, const ta_bind_prof_row_t *r), void *arg,
                     char *err, size_t errlen);
/* `trimalloc top FILE`: the text table, written to fd. */
int ta_bind_prof_top_text(const char *path, const char *order, size_t n, int fd, char *err, size_t errlen);
/* The same table as a malloc'ed string in *out (the caller frees it). */
int ta_bind_prof_top_str(const char *path, const char *order, size_t n, char **out, char *err, size_t errlen);
/* `trimalloc flame FILE -o OUT`: a self-contained SVG flame graph of sample type `type`
 * (NULL: inuse_space), or with collapsed != 0 collapsed stacks ("root;...;leaf value\n").
 * out "-" is stdout. */
int ta_bind_prof_flame(const char *path, const char *type, int collapsed, const char *out,
                       char *err, size_t errlen);

/* ---- bind_launch.c ---- */

/* The directories the launcher searches for a command, ':'-separated: `first`
 * (the running interpreter's environment's bin directory, e.g. a venv's; NULL
 * or "" for none) in front of PATH (unset: execvp's default), unless PATH
 * already starts with it. malloc'ed; NULL when out of memory. */
char *ta_bind_search_path(const char *first);

/* The file a shell would run for `cmd` with search path `path`: cmd itself
 * when it holds a '/', else the first executable regular file named cmd in
 * path's directories (an empty entry is the current directory). malloc'ed;
 * NULL with errno ENOENT (none), or EACCES (only files that are not
 * executable). */
char *ta_bind_which(const char *cmd, const char *path);

/* Launcher. Finds argv[0] in ta_bind_search_path(first) (ta_bind_which),
 * and only then puts `first` in front of PATH (as activating the environment
 * would: an interpreter started as `python3` finds its venv through PATH),
 * prepends `lib` to LD_PRELOAD (keeping what is there, not adding it twice),
 * sets PYTHONMALLOC=malloc when pythonmalloc is non-zero, and execs the file
 * with argv (argv[0] as given; a file without #! runs under /bin/sh, as
 * execvp does). Returns only on failure, with errno set (ENOENT: not found,
 * the environment untouched). */
int ta_bind_exec_in(const char *lib, char *const argv[], int pythonmalloc, const char *first);

/* ta_bind_exec_in with first = NULL: PATH alone. */
int ta_bind_exec(const char *lib, char *const argv[], int pythonmalloc);

/* `run --profile DIR` (both launchers, before ta_bind_exec_in): makes DIR
 * and its missing parents (mode 0777 less the umask), then sets
 * TRIMALLOC_PROF=1 and TRIMALLOC_PROF_PREFIX=<DIR made absolute>/<basename of
 * cmd>, so the command samples from its start and its dumps
 * (<prefix>.<pid>.<seq>.<reason>.pb.gz) land in DIR whatever its working
 * directory. Returns 0, or -1 with errno: EINVAL (dir or cmd NULL or ""),
 * ENOTDIR (a component exists and is not a directory), or mkdir's/realpath's. */
int ta_bind_profile_env(const char *dir, const char *cmd);

/* `preload`: run this program again, same pid, with the library preloaded.
 * Re-executes /proc/self/exe with `argv`, the interpreter's own record of
 * its command line (Python's sys.orig_argv), or when argv is NULL with the
 * command line the process was started with, as the C runtime passed it to
 * the extension (checked against /proc/self/cmdline: a rewritten title is
 * refused, never re-executed). Refuses, returning a TA_PRELOAD_* code > 1 and
 * leaving the process as it is, when a re-exec would not run the same program
 * once: in a process forked from one running the same program (a server's
 * worker: a re-exec would start a second server), when the command line was
 * rewritten (`title_changed` says so, or what /proc/self/cmdline holds is not
 * the command line), or when the program came from -c/-e or standard input
 * (`script` is "-c", "-e", "-" or "").
 * `title`, with `argv`: the process title a launcher running in this same
 * process set before loading the program, argv being the command line it
 * stands for (Bundler's `bundle exec` sets $0 to a Ruby command's path and
 * the title to "path args", then loads it: argv is then ruby, path, args).
 * /proc/self/cmdline must show exactly that title (then only NUL padding),
 * so a title set later by anyone else is still refused. */
typedef struct {
  const char *lib;
  int pythonmalloc;
  char *const *argv; /* NULL-terminated, or NULL */
  const char *script; /* sys.argv[0] / Process.argv0 */
  int title_changed;  /* the interpreter knows its title was changed */
  const char *title;  /* with argv: the title /proc/self/cmdline shows; or NULL */
} ta_bind_preload_req_t;

enum {
  TA_PRELOAD_FAILED = -1,     /* the re-exec failed (errno set) */
  TA_PRELOAD_ACTIVE = 0,      /* already on trimalloc */
  TA_PRELOAD_GUARD = 1,       /* re-executed once, still not active */
  TA_PRELOAD_FORKED = 2,      /* a forked child of the same program */
  TA_PRELOAD_REWRITTEN = 3,   /* the command line was rewritten */
  TA_PRELOAD_NOT_A_FILE = 4,  /* -c, -e or standard input */
  TA_PRELOAD_NO_LIBRARY = 5,  /* lib missing or unreadable (errno set) */
};

int ta_bind_preload_req(const ta_bind_preload_req_t *req);

/* One line saying why (no trailing newline); "" for 0. Static storage. */
const char *ta_bind_preload_reason(int code);

/* Whether this process is a fork of its parent that runs the same program
 * (same executable, same memory layout): 1 yes, 0 no or unknown. */
int ta_bind_forked_child(void);

/* The old entry point: ta_bind_preload_req with argv = NULL, script = NULL. */
int ta_bind_preload(const char *lib, int pythonmalloc);

/* ---- bind_sampler.c: the core's heap profiler ----
 * The trimalloc_prof_* functions of trimalloc.h, found with dlsym when the
 * core is the process's allocator. */

#ifndef TRIMALLOC_PROF_LIVE /* a trimalloc.h from before the profiler */
#define TRIMALLOC_PROF_LIVE 0
#define TRIMALLOC_PROF_PEAK 1
#endif

/* 1 when trimalloc is the process's allocator and its core has the profiler. */
int ta_bind_sampler_available(void);

/* Why not, in one line that says how to run under trimalloc; "" when
 * available. Static storage. */
const char *ta_bind_sampler_unavailable(void);

/* trimalloc_prof_start/stop/interval/dump (same arguments and returns);
 * start and dump return ENOSYS when not available, dump EINVAL for a kind
 * other than TRIMALLOC_PROF_LIVE/PEAK; stop and interval answer 0. */
int ta_bind_sampler_start(size_t interval);
int ta_bind_sampler_stop(void);
size_t ta_bind_sampler_interval(void);
int ta_bind_sampler_dump(const char *path, int kind, char *written, size_t size);

/* trimalloc_prof_reset_peak/set_tag; nothing when not available (so that a
 * job or request hook may always call them). */
void ta_bind_sampler_reset_peak(void);
void ta_bind_sampler_set_tag(const char *tag);

#define TA_BIND_GUARD_ENV "TRIMALLOC_PRELOAD_GUARD"

/* ---- bind_jobs.c: the work a binding runs without its interpreter lock ----
 * One struct for every such call: the binding fills the inputs of a kind,
 * runs ta_bind_job_run (the signature of Ruby's rb_thread_call_without_gvl
 * function; Python calls it between Py_BEGIN/END_ALLOW_THREADS), and converts
 * the outputs. It touches no interpreter object. */
enum {
  TA_JOB_TRIM,      /* ta_bind_trim: released */
  TA_JOB_RUN,       /* the trim a decision asked for: trimmer's, or (NULL) the policy's; released (-1 coalesced) */
  TA_JOB_RUN_AFTER, /* ta_bind_run_trim_after(wait_ms, &stop): released */
  TA_JOB_DUMP,      /* ta_bind_sampler_dump(path, dump_kind): rc (an errno value), msg the path written */
  TA_JOB_TOP_TEXT,  /* ta_bind_prof_top_str(path, type, n): rc, text (malloc'ed), msg, err */
  TA_JOB_FLAME,     /* ta_bind_prof_flame(path, type, collapsed, out): rc, msg, err */
};
typedef struct {
  int kind;
  ta_bind_trimmer_t *trimmer;
  int wait_ms;
  _Atomic int stop; /* set by ta_bind_job_stop (Ruby's unblocking function) */
  const char *path, *type, *out;
  size_t n;
  int collapsed, dump_kind;
  int ran;          /* set by ta_bind_job_run: the work ran */
  int64_t released; /* bytes, or -1 */
  int rc, err;      /* the call's return and errno after it */
  char *text;
  char msg[4096];
} ta_bind_job_t;
void *ta_bind_job_run(void *job);
void ta_bind_job_stop(void *job);

/* How a binding reports an errno value from core/bind: TA_ERR_ARGUMENT (0 or
 * EINVAL: bad contents or a bad argument: ValueError / ArgumentError),
 * TA_ERR_MEMORY (ENOMEM), TA_ERR_SYSTEM (any other: OSError / Errno::*). */
enum { TA_ERR_ARGUMENT, TA_ERR_MEMORY, TA_ERR_SYSTEM };
int ta_bind_error_kind(int err);

/* ---- bind_gc_hook.c: a GC hook's policy and counters (Ruby's Trimalloc::GC) ----
 * The binding owns the interpreter's side: it sees a collection end (inside
 * the GC: no allocation), schedules a job when ta_bind_gc_hook_collected
 * says so (counting it in `scheduled`), and in the job calls
 * ta_bind_gc_hook_job with its way of running a ta_bind_job_t without the
 * interpreter lock (which may decline: then the job's `ran` stays 0). The
 * job decides with the lock held (ta_bind_due: a clock read) and trims
 * without it. A forced collection (one the program asked for, GC.start)
 * trims regardless of min_interval and min_free, waiting for a running trim
 * up to TA_BIND_GC_FORCED_WAIT_MS; when the binding could not release its
 * lock, that trim is handed to the policy's thread (ta_bind_trim_soon). */
#define TA_BIND_GC_FORCED_WAIT_MS 1000
typedef struct {
  int enabled, major_only;
  double min_interval;
  uint64_t min_free;  /* trim only with this many bytes free but resident (0: always) */
  uint64_t sweeps;    /* collections that ended while enabled */
  uint64_t scheduled; /* jobs scheduled (by the binding) */
  uint64_t trims, skipped, trimmed_bytes;
  uint64_t skipped_free; /* of skipped: less than min_free free */
  uint64_t coalesced;    /* due, but another trim was running: folded into it */
  uint64_t handed;       /* forced trims handed to the policy's thread */
  int forced;            /* the pending job's collection was forced */
} ta_bind_gc_hook_t;
/* major_only 1, min_interval the "gc" defaults', the rest 0. */
void ta_bind_gc_hook_init(ta_bind_gc_hook_t *h);
/* A collection ended: 1 when the binding should schedule the job. */
int ta_bind_gc_hook_collected(ta_bind_gc_hook_t *h, int major, int forced);
void ta_bind_gc_hook_job(ta_bind_gc_hook_t *h, void (*unlocked)(ta_bind_job_t *job));
/* enabled, major_only ('b'), min_interval ('d'), min_free, events (= sweeps),
 * sweeps, scheduled, trims, skipped, skipped_free, coalesced, handed,
 * trimmed_bytes ('u'). Returns the count. */
#define TA_BIND_GC_HOOK_NFIELDS 13
size_t ta_bind_gc_hook_fields(const ta_bind_gc_hook_t *h, ta_bind_field_t *out);

/* ---- bind_pymalloc.c: pymalloc's empty and sparse pools (Python's) ----
 * An arena allocator that remembers pymalloc's arenas, and a walk of their
 * pools on every trim (ta_bind_set_host) that gives back the pages of empty
 * pools and the free pages of sparse ones; the comment at the top of
 * bind_pymalloc.c says how. The interpreter's side comes from the binding
 * (ext-python/trimalloc/_pools.c): its version, its arena allocator's
 * functions and its thread state's (found at run time, outside the limited
 * API), and the GIL, taken on the policy's thread. The calls below are made
 * with the GIL held. */

/* Include/cpython/objimpl.h's PyObjectArenaAllocator. */
typedef struct {
  void *ctx;
  void *(*alloc)(void *ctx, size_t size);
  void (*free)(void *ctx, void *ptr, size_t size);
} ta_bind_arena_allocator_t;

typedef struct {
  const char *version; /* Py_GetVersion(): the walk runs on 3.8 to 3.13 with the GIL only */
  void (*get_allocator)(ta_bind_arena_allocator_t *a); /* PyObject_GetArenaAllocator */
  void (*set_allocator)(ta_bind_arena_allocator_t *a); /* PyObject_SetArenaAllocator */
  void *(*tstate)(void);            /* this thread's thread state, NULL when none (no fatal error) */
  void *(*tstate_interp)(void *ts); /* a thread state's interpreter; NULL: unknown (3.8) */
  /* On the policy's thread, which holds no GIL: takes it (PyGILState_Ensure)
   * and returns what unlock needs, or -1 when the interpreter is not
   * initialized (nothing taken: the walk is skipped). */
  int (*lock)(void);
  void (*unlock)(int state);
} ta_bind_pymalloc_host_t;

/* Installs the arena allocator and registers the walk as the host's trim
 * (ta_bind_set_host), once per process: 1 when installed (later calls:
 * whether it still is), 0 on a version it does not know, with pools of one
 * OS page (nothing to give back), or when a function is missing. Trims walk
 * the arenas of the calling thread's interpreter only. */
int ta_bind_pymalloc_install(const ta_bind_pymalloc_host_t *host);

/* At exit (the installing interpreter's; another's is ignored): trims leave
 * pymalloc alone from now on, and never take the GIL of a finalizing
 * interpreter. */
void ta_bind_pymalloc_off(void);

/* For a binding's call that trims without the GIL (ta_py_job): begin (1)
 * before it lets go of the GIL, walking the pools then when the job trims
 * (trims 2: every sparse pool weighed, trimalloc.trim(); 1: at most
 * TA_BIND_PYMALLOC_TRIM_BUDGET, a hook's), for the trim to count what they
 * gave; end (0) after it has the GIL back. */
void ta_bind_pymalloc_job(int begin, int trims);

/* The sparse pools a walk weighs at most (one unchanged since it was
 * weighed is not weighed again): for the policy's free-bytes figure, and
 * for a hook's or the policy thread's trim. */
#define TA_BIND_PYMALLOC_READ_BUDGET 512
#define TA_BIND_PYMALLOC_TRIM_BUDGET 2048

/* on ('b'), arenas, arena_bytes, free_bytes (what a trim would give back
 * now: every changed sparse pool weighed, or with weigh_all 0 at most
 * TA_BIND_PYMALLOC_READ_BUDGET of them), trims, pools_released,
 * sparse_pools_trimmed, released_bytes ('u'). Returns the count. */
#define TA_BIND_PYMALLOC_NFIELDS 8
size_t ta_bind_pymalloc_fields(int weigh_all, ta_bind_field_t *out);

/* ---- the calls without arguments both bindings expose as they are ----
 * X(name, kind, expression, where, doc), expanded by each binding into its
 * wrappers and its method table (_backend.c, backend.c): each call's name,
 * what it returns and its doc are written here once. kind, how the result
 * converts: bool (a predicate: Ruby's name ends in '?'), name (Python str,
 * Ruby Symbol), str and path (NULL: None / nil), u64, int, none (nothing:
 * None / nil). where: api (Ruby: Trimalloc.name), internal (Ruby:
 * Trimalloc::Native.name), test (Python: _name; Ruby: private on Trimalloc),
 * profile (Python: _prof_name; Ruby: Trimalloc::Profile.name). */
#define TA_BIND_CALLS(X)                                                                              \
  X(active, bool, ta_bind_backend() == TA_BACKEND_TRIMALLOC, api,                                     \
    "whether the process's malloc is trimalloc's")                                                    \
  X(backend, name, ta_bind_backend_name(), api, "the allocator that answers: trimalloc or glibc")     \
  X(loaded_path, path, ta_bind_loaded_path(), api, "the path of the loaded core; none when not active") \
  X(core_version, str, ta_bind_core_version(), api, "the loaded core's version; none when not active") \
  X(free_bytes, u64, ta_bind_free_bytes(), api, "bytes free but still resident in the allocator")     \
  X(rss, u64, ta_bind_rss(), api, "the process's resident set size in bytes")                         \
  X(free_source, name, ta_bind_free_source_name(ta_bind_free_source()), api,                          \
    "where free_bytes comes from: dirty, resident, mallinfo2, mallinfo or unknown")                   \
  X(forked_child, bool, ta_bind_forked_child(), api,                                                  \
    "whether this process is a fork of one running the same program (a server's worker)")            \
  X(purger_state, str, ta_bind_purger_state(), internal,                                              \
    "the core's background purger in this process, in words")                                         \
  X(interval, u64, ta_bind_sampler_interval(), profile, "the heap profiler's mean sampling interval in bytes, 0 while off") \
  X(reset_peak, none, ta_bind_sampler_reset_peak(), profile, "the peak profile starts again from now") \
  X(test_gate_open, none, ta_bind_test_gate_open(), test, "for tests: opens the gate (ta_bind_test_gate)") \
  X(test_gate_state, int, ta_bind_test_gate_state(), test, "for tests: the gate's state (ta_bind_test_gate)")

/* ---- the facts both extensions expose as constants (DEFAULTS aside) ----
 * X(NAME, kind, value, count), expanded by each extension (_trimalloc.c:
 * module attributes; shared.c: Trimalloc::Native's frozen constants). kind:
 * fields (value fills a ta_bind_field_t[count]: a dict / Hash of name ->
 * value), names (value[0 .. count): a tuple of str / an Array of Symbols),
 * u64, str. */
#define TA_BIND_FACTS_MAXFIELDS 16
#define TA_BIND_FACTS(X)                                                                    \
  X(PRELOAD, fields, ta_bind_preload_fields, TA_BIND_PRELOAD_NCODES) /* the preload's results */ \
  X(TRIMMER_COUNTS, names, ta_bind_trimmer_counts, TA_BIND_TRIMMER_NFIELDS) /* a trimmer's stats */ \
  X(SAMPLE_TYPES, names, ta_bind_prof_types, TA_BIND_PROF_ROW_NFIELDS) /* a profile's, a row's order */ \
  X(PROF_KINDS, fields, ta_bind_prof_kind_fields, TA_BIND_PROF_NKINDS) /* dump's kinds: live, peak */ \
  X(PROF_MAX_INTERVAL, u64, TA_BIND_PROF_MAX_INTERVAL, 1) /* bytes */                      \
  X(GUARD_ENV, str, TA_BIND_GUARD_ENV, 1) /* the preload's re-exec guard */

/* ---- the tests' hooks that take numbers, both bindings expose them ----
 * X(name, nargs, expression over double a[0 .. nargs), doc), expanded by each
 * binding (_backend.c, backend.c): Python _name(...), Ruby's private
 * Trimalloc.name(...); each argument converts to a double (a bool to 0 or 1). */
#define TA_BIND_TEST_CALLS(X)                                                                         \
  X(advance_clock, 1, ta_bind_clock_advance(a[0]),                                                    \
    "(seconds): for tests, moves the rate limit's clock forward")                                     \
  X(advance_cpu, 1, ta_bind_cpu_advance(a[0]),                                                        \
    "(seconds): for tests, moves the refault budget's CPU clock forward")                             \
  X(test_refault, 2, (ta_bind_test_fault_ns(a[0]), ta_bind_test_free_bytes((int64_t)a[1])),           \
    "(fault_ns, free_bytes): for tests, sets the fault cost (0: measured) and pins the free-bytes "   \
    "figure (-1: the backend's)")                                                                     \
  X(test_gate, 1, ta_bind_test_gate(a[0] != 0), "(on): for tests, arms the gate in the next trim (ta_bind_test_gate)")
#define TA_BIND_TEST_MAXARGS 2

/* ---- bind_facts.c: what both languages tell their users, written once ----
 * Each extension exposes these at run time; the Python and Ruby code reads
 * them there instead of spelling them again. */

/* A hook's default policy (see ta_bind_trimmer_t). */
typedef struct {
  const char *hook;    /* "trimmer", "gc", "job", "request", "out_of_band" */
  uint64_t every;      /* 0: off (None / nil) */
  int64_t min_free;    /* -1: off (None / nil) */
  double min_interval; /* seconds */
  double refault_share; /* 0: no refault budget (ta_bind_trimmer_set_share) */
} ta_bind_defaults_t;
/* Every hook's defaults, ending with {NULL}. */
extern const ta_bind_defaults_t ta_bind_defaults[];
/* The defaults of `hook`, or NULL when there is no such hook. */
const ta_bind_defaults_t *ta_bind_defaults_for(const char *hook);

/* A hook's defaults as fields: every ('u', 'n' when off), min_free ('i', 'n'
 * when off), min_interval and refault_share ('d'). Returns the count. */
#define TA_BIND_DEFAULTS_NFIELDS 4
size_t ta_bind_defaults_fields(const ta_bind_defaults_t *d, ta_bind_field_t *out);

/* A trimmer's settings as fields, as ta_bind_defaults_fields gives a hook's
 * defaults (every, min_free, min_interval, refault_share; 'n': off). */
size_t ta_bind_trimmer_settings(const ta_bind_trimmer_t *t, ta_bind_field_t *out);

/* A trimmer's counters ('u' fields), named in ta_bind_trimmer_counts:
 * events, trims, skipped, coalesced, trimmed_bytes, refault_skips. Fills
 * out[0 .. TA_BIND_TRIMMER_NFIELDS-1]; returns the count. */
#define TA_BIND_TRIMMER_NFIELDS 6
extern const char *const ta_bind_trimmer_counts[TA_BIND_TRIMMER_NFIELDS];
size_t ta_bind_trimmer_fields(ta_bind_trimmer_t *t, ta_bind_field_t *out);

/* ta_bind_policy_stats as fields: pending and busy ('b': v.u 0 or 1),
 * deferred, coalesced, free_reads, refault_skips, idle_trims ('u'), fault_ns
 * ('d'). Returns the count. */
#define TA_BIND_POLICY_NFIELDS 8
size_t ta_bind_policy_fields(ta_bind_field_t *out);

/* ta_bind_free_source's value as a name: "unknown", "dirty", "resident",
 * "mallinfo2", "mallinfo". */
const char *ta_bind_free_source_name(int source);

/* A TA_PRELOAD_* code's name ("failed", "active", "guard", "forked",
 * "rewritten", "not_a_file", "no_library"), or NULL for any other int. */
const char *ta_bind_preload_name(int code);

/* Every TA_PRELOAD_* code as a field {name, 'i', code}. Returns the count. */
#define TA_BIND_PRELOAD_NCODES 7
size_t ta_bind_preload_fields(ta_bind_field_t *out);

/* The four sample types a profile row carries, in its order (bind_prof_top.c:
 * the readers' `by`/`type`): inuse_space, inuse_objects, alloc_space,
 * alloc_objects. A row's numbers as 'i' fields named so; returns 4. */
#define TA_BIND_PROF_ROW_NFIELDS 4
extern const char *const ta_bind_prof_types[TA_BIND_PROF_ROW_NFIELDS];
size_t ta_bind_prof_row_fields(const ta_bind_prof_row_t *r, ta_bind_field_t *out);

/* The dump kinds by name: live (TRIMALLOC_PROF_LIVE), peak (..._PEAK), 'i'. */
#define TA_BIND_PROF_NKINDS 2
size_t ta_bind_prof_kind_fields(ta_bind_field_t *out);

/* The largest sampling interval the core takes (trimalloc_prof_start), bytes. */
#define TA_BIND_PROF_MAX_INTERVAL (1ull << 30)

/* What both extensions say when core/bind refuses a converted argument
 * (EINVAL); each adds the value, in its language's words. */
#define TA_BIND_MSG_INTERVAL "interval must be 1 .. 1 GiB (bytes)"                  /* ta_bind_sampler_start */
#define TA_BIND_MSG_PROFILE_ENV "the directory and the command must not be empty"   /* ta_bind_profile_env */
#define TA_BIND_MSG_ROWS "n must be >= 0 (0: all)"                                   /* the profile readers' n */
#define TA_BIND_MSG_TRIMMER "trimmer settings refused"                               /* ta_bind_trimmer_init, _set_share */

/* ---- bind_frames.c: what the interpreters' frame walkers share ----
 * Each extension walks its own interpreter's frames (the part that is per
 * language: _prof.c, frames.c). The rest is here: registering the walker
 * with the core's profiler, naming keys, the table of the keys handed to
 * the core, and the walker's cost. */

/* A walker: this thread's frames, leaf first, as the core's frames hook
 * (trimalloc_prof_frames_fn): keys[i] names a function, lines[i] its line. */
typedef int (*ta_bind_frames_fn)(uint64_t *keys, int32_t *lines, int max);

/* Registers fn (NULL: none) as the core's frames hook, eval_fn being the
 * interpreter's eval loop (trimalloc_prof_set_frames_hook). 0, ENOSYS when
 * the core is not the allocator or has no profiler, or the core's error. */
int ta_bind_frames_set_hook(ta_bind_frames_fn fn, const void *eval_fn);

/* ta_bind_frames_set_hook once trimalloc is the allocator, eval_fn being
 * the address of eval_symbol in the process (the interpreter's eval loop;
 * not found: NULL, or with eval_needed not registered):
 * TA_BIND_FRAMES_REGISTERED, or one line saying why not (static storage). */
#define TA_BIND_FRAMES_REGISTERED "registered"
const char *ta_bind_frames_register(ta_bind_frames_fn fn, const char *eval_symbol, int eval_needed);

/* fn run once on a new native thread (one the interpreter never saw): the
 * frames it found (0 expected), or -errno when no thread could start. */
int ta_bind_frames_on_thread(ta_bind_frames_fn fn, int max);

/* trimalloc_prof_name_frame: 0, ENOSYS (no hook was registered yet), or
 * ENOMEM (the core's budget for names is full). Safe inside the hook: it
 * only calls the core, which copies the strings. */
int ta_bind_frames_name(uint64_t key, const char *name, const char *file);

/* The keys a walker handed to the core, each to be kept alive (and fixed
 * in place) by the binding so that its address never comes to mean another
 * function. Open addressing over mmap'ed memory, touched as it fills (never
 * malloc: keys are added inside malloc): the slots in use are a prefix of
 * the mapping that doubles when half full. No lock: each binding touches it
 * only with its interpreter lock held. */
typedef struct {
  uint64_t *keys;   /* keys[0 .. n), in the order added */
  uint32_t *slots;  /* index + 1 into keys, 0: empty; slots[0 .. mask] in use */
  size_t n, max, mask;
  size_t slots_max; /* slots mapped: mask + 1 grows up to this */
} ta_bind_keys_t;
/* Room for max keys. 0, or the errno of mmap (the table then refuses
 * every key, as a full one). */
int ta_bind_keys_init(ta_bind_keys_t *k, size_t max);
enum { TA_BIND_KEY_FULL = 0, TA_BIND_KEY_HELD = 1, TA_BIND_KEY_ADDED = 2 };
/* Adds key: TA_BIND_KEY_HELD (it was there), TA_BIND_KEY_ADDED, or
 * TA_BIND_KEY_FULL (not there, and no room). */
int ta_bind_keys_add(ta_bind_keys_t *k, uint64_t key);
/* Whether key is in the table. */
int ta_bind_keys_has(const ta_bind_keys_t *k, uint64_t key);

/* A walker's keys and counters: the table, how many of its keys were named
 * (keys[0 .. named)), and what was dropped, refused a name, sampled and
 * skipped. Touched with the interpreter lock held (skipped: by any thread). */
typedef struct {
  ta_bind_keys_t table;
  size_t named;
  uint64_t dropped;         /* frames left out: the table was full */
  uint64_t unnamed;         /* keys the core refused a name (its budget full) */
  uint64_t samples;         /* walks that returned frames */
  _Atomic uint64_t skipped; /* walks on a thread without the lock (or in the GC) */
  int hooked;               /* registered as the core's frames hook */
  int test_full;            /* tests: refuse new keys, as a full table */
} ta_bind_walker_t;
/* Whether key is (now) in the table; a refused one is counted in dropped. */
int ta_bind_walker_keep(ta_bind_walker_t *w, uint64_t key);
/* The next key not yet named (1), or 0 when all are. */
int ta_bind_walker_next(const ta_bind_walker_t *w, uint64_t *key);
/* Names that key (ta_bind_frames_name; a refusal counted in unnamed). */
void ta_bind_walker_name(ta_bind_walker_t *w, const char *name, const char *file);
/* frames, named, dropped, unnamed, samples, skipped ('u'), hooked ('b'). */
#define TA_BIND_WALKER_NFIELDS 7
size_t ta_bind_walker_fields(ta_bind_walker_t *w, ta_bind_field_t *out);

/* fn(keys, lines, max) run n times (n >= 1, max at most 1024) on this
 * thread: the mean ns of a call, *got the frames of the last. What a
 * sample's interpreter frames cost at this depth. */
double ta_bind_frames_cost(ta_bind_frames_fn fn, long n, int max, int *got);

/* Code point c as UTF-8 into out (1 to 4 bytes; a surrogate, which UTF-8
 * cannot hold, as '?'). Returns the length. */
size_t ta_bind_utf8_put(uint32_t c, char out[4]);


#endif
