/* core/bind's shared pieces of the bindings' hooks, which the extensions
 * only drive (Ruby's gc_hook.c and frames.c, both extensions' calls without
 * their interpreter lock):
 *  - the GC hook's policy (bind_gc_hook.c): a minor collection schedules
 *    nothing while major_only; a job decides with the policy (min_interval,
 *    min_free) and counts trims, skips, skips for too little free memory,
 *    coalesced trims; a forced collection (GC.start) trims past both limits,
 *    waiting for a running trim, and is handed to the policy's thread when
 *    the binding cannot release its lock; its counters as fields, in order;
 *  - the jobs (bind_jobs.c): a profile reader's failure comes back with its
 *    errno and message, sorted into argument, memory and system errors;
 *  - a walker's table and counters (bind_frames.c): a full table drops and
 *    counts, every key is named once, in order, a refused name is counted;
 *  - the host's own free memory (ta_bind_set_host, pymalloc's pools for
 *    Python): every trim runs the host's first and adds its bytes, the
 *    free-bytes figure adds the host's, and each is told whether it runs on
 *    the policy's own thread (which holds no interpreter lock). */
#include "check.h"
#include "../../core/bind/binding.h"

static int unlocked_calls, decline;
static ta_bind_job_t seen_job;

/* The binding's way of running a job without its lock; `decline` as when
 * Ruby's _gvl2 finds an interrupt pending. */
static void unlocked(ta_bind_job_t *j) {
  unlocked_calls++;
  seen_job.kind = j->kind;
  seen_job.wait_ms = j->wait_ms;
  if (!decline) ta_bind_job_run(j);
}

static void test_gc_hook(void) {
  ta_bind_gc_hook_t h;
  ta_bind_gc_hook_init(&h);
  CHECK(h.major_only == 1 && h.min_interval == ta_bind_defaults_for("gc")->min_interval, "init: %d %g",
        h.major_only, h.min_interval);
  CHECK(!ta_bind_gc_hook_collected(&h, 0, 0) && h.sweeps == 1, "a minor GC schedules a job while major_only");
  CHECK(ta_bind_gc_hook_collected(&h, 1, 0) && h.sweeps == 2 && !h.forced, "a major GC schedules one");
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(unlocked_calls == 0 && h.trims == 0 && h.skipped == 0, "a disabled hook's job does nothing");

  h.enabled = 1;
  h.min_interval = 0;
  h.min_free = 0;
  ta_bind_clock_advance(3600);
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(unlocked_calls == 1 && h.trims == 1 && h.skipped == 0, "due: trims %llu skipped %llu",
        (unsigned long long)h.trims, (unsigned long long)h.skipped);
  CHECK(seen_job.kind == TA_JOB_RUN_AFTER && seen_job.wait_ms == 0, "a plain trim waits for none: %d",
        seen_job.wait_ms);

  h.min_interval = 3600; /* one just ran */
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(unlocked_calls == 1 && h.skipped == 1 && h.skipped_free == 0, "within min_interval: skipped, not run");

  ta_bind_clock_advance(7200);
  ta_bind_test_free_bytes(0);
  h.min_free = 1;
  /* no interval: the trim the skip above deferred runs on the policy
   * thread once the clock moves, and may set the last trim's time to the
   * moved clock before this job looks (TSan, 2 in 3 runs): the job would
   * then skip for the interval, not for the free bytes */
  h.min_interval = 0;
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(unlocked_calls == 1 && h.skipped == 2 && h.skipped_free == 1, "too little free: skipped_free %llu",
        (unsigned long long)h.skipped_free);
  h.min_interval = 3600;

  h.major_only = 0;
  CHECK(ta_bind_gc_hook_collected(&h, 0, 1) && h.forced, "a forced GC schedules a forced job");
  ta_bind_gc_hook_job(&h, unlocked); /* min_interval 3600 and min_free 1 both passed */
  CHECK(unlocked_calls == 2 && h.trims == 2 && !h.forced, "forced: trims %llu", (unsigned long long)h.trims);
  CHECK(seen_job.wait_ms == TA_BIND_GC_FORCED_WAIT_MS, "a forced trim waits for a running one: %d", seen_job.wait_ms);

  decline = 1;
  ta_bind_gc_hook_collected(&h, 1, 1);
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(h.handed == 1 && h.skipped == 3 && h.trims == 2, "declined forced trim: handed %llu skipped %llu",
        (unsigned long long)h.handed, (unsigned long long)h.skipped);
  ta_bind_gc_hook_collected(&h, 1, 0);
  ta_bind_clock_advance(7200);
  ta_bind_test_free_bytes(1 << 20);
  ta_bind_gc_hook_job(&h, unlocked);
  CHECK(h.handed == 1 && h.skipped == 4, "a declined plain trim is not handed");
  decline = 0;
  ta_bind_test_free_bytes(-1);

  ta_bind_field_t f[TA_BIND_GC_HOOK_NFIELDS];
  static const char *const names[TA_BIND_GC_HOOK_NFIELDS] = {
      "enabled", "major_only", "min_interval", "min_free", "events", "sweeps", "scheduled",
      "trims", "skipped", "skipped_free", "coalesced", "handed", "trimmed_bytes"};
  CHECK(ta_bind_gc_hook_fields(&h, f) == TA_BIND_GC_HOOK_NFIELDS, "field count");
  int bad = 0;
  for (size_t i = 0; i < TA_BIND_GC_HOOK_NFIELDS; i++) bad += strcmp(f[i].name, names[i]) != 0 || !f[i].present;
  CHECK(bad == 0, "%d fields misnamed", bad);
  CHECK(f[0].type == 'b' && f[2].type == 'd' && f[2].v.d == 3600 && f[4].v.u == h.sweeps && f[5].v.u == h.sweeps &&
            f[7].v.u == 2 && f[11].v.u == 1,
        "field values");
}

static void test_jobs(void) {
  ta_bind_job_t j = {.kind = TA_JOB_TOP_TEXT, .path = "/nonexistent/trimalloc-test.pb.gz", .n = 1};
  ta_bind_job_run(&j);
  CHECK(j.ran && j.rc != 0 && j.err == ENOENT && strstr(j.msg, "/nonexistent/trimalloc-test.pb.gz"),
        "a missing profile: rc %d err %d msg '%s'", j.rc, j.err, j.msg);
  CHECK(ta_bind_error_kind(j.err) == TA_ERR_SYSTEM, "ENOENT is a system error");
  CHECK(ta_bind_error_kind(EINVAL) == TA_ERR_ARGUMENT && ta_bind_error_kind(0) == TA_ERR_ARGUMENT &&
            ta_bind_error_kind(ENOMEM) == TA_ERR_MEMORY,
        "error kinds");
  ta_bind_job_t t = {.kind = TA_JOB_TRIM, .released = -1};
  ta_bind_job_run(&t);
  CHECK(t.ran && t.released >= 0, "a trim job: %lld", (long long)t.released);
}

/* The host's trims by where they ran: this thread, or the policy's (a
 * deferred trim an earlier test left may run there at any time). */
static _Atomic int host_trims_here, host_trims_policy, host_frees;

static uint64_t host_trim(int policy_thread) {
  if (policy_thread) host_trims_policy++;
  else host_trims_here++;
  return 12345;
}

static uint64_t host_free(int policy_thread) {
  (void)policy_thread;
  host_frees++;
  return 1 << 20;
}

static void test_host(void) {
  ta_bind_set_host(host_trim, host_free);
  /* the policy's figure counts the host's free memory (1 MiB): a guard of
   * 512 KiB over the allocator's own free bytes passes with it, not without */
  ta_bind_trim();
  uint64_t own;
  if (ta_bind_free_known(&own)) { /* else the guard lets every trim through */
    ta_bind_clock_advance(3600);
    CHECK(ta_bind_due(0, own + (512 << 10), NULL) && host_frees >= 1,
          "the guard counts the host's bytes (%d reads, %llu of the allocator's)", host_frees,
          (unsigned long long)own);
    ta_bind_set_host(host_trim, NULL);
    ta_bind_clock_advance(3600);
    CHECK(!ta_bind_due(0, own + (512 << 10), NULL), "without them, it does not pass");
    ta_bind_set_host(host_trim, host_free);
  }
  int here = host_trims_here;
  uint64_t released = ta_bind_trim();
  CHECK(host_trims_here == here + 1 && released >= 12345, "a trim on this thread runs the host's first and adds it: "
        "%d %llu", host_trims_here - here, (unsigned long long)released);
  int policy = host_trims_policy;
  ta_bind_trim_soon(); /* on the policy's thread */
  for (int i = 0; i < 5000 && host_trims_policy == policy; i++) usleep(1000);
  CHECK(host_trims_policy > policy, "the policy thread's trim says where it runs");
  ta_bind_set_host(NULL, NULL);
  here = host_trims_here;
  ta_bind_trim();
  CHECK(host_trims_here == here, "unregistered: not called");
}

static void test_walker(void) {
  ta_bind_walker_t w = {0};
  CHECK(ta_bind_keys_init(&w.table, 4) == 0, "init: %s", strerror(errno));
  for (uint64_t k = 1; k <= 5; k++) ta_bind_walker_keep(&w, k * 64);
  CHECK(w.table.n == 4 && w.dropped == 1, "a full table drops: n %zu dropped %llu", w.table.n,
        (unsigned long long)w.dropped);
  CHECK(ta_bind_walker_keep(&w, 64) && w.dropped == 1, "a key held is kept when full");
  w.test_full = 1;
  CHECK(!ta_bind_walker_keep(&w, 999 * 64) && ta_bind_walker_keep(&w, 128) && w.dropped == 2, "test_full");
  uint64_t key, named[8];
  size_t n = 0;
  while (n < 8 && ta_bind_walker_next(&w, &key)) {
    named[n++] = key;
    ta_bind_walker_name(&w, "f", "f.rb"); /* no hook registered: refused (ENOSYS) */
  }
  CHECK(n == 4 && named[0] == 64 && named[3] == 256 && w.named == 4 && w.unnamed == 4, "named %zu, unnamed %llu", n,
        (unsigned long long)w.unnamed);
  ta_bind_field_t f[TA_BIND_WALKER_NFIELDS];
  CHECK(ta_bind_walker_fields(&w, f) == TA_BIND_WALKER_NFIELDS && !strcmp(f[0].name, "frames") && f[0].v.u == 4 &&
            !strcmp(f[6].name, "hooked") && f[6].type == 'b',
        "walker fields");
}

int main(void) {
  ta_bind_init();
  RUN(test_gc_hook);
  RUN(test_jobs);
  RUN(test_walker);
  RUN(test_host);
  return check_summary();
}
