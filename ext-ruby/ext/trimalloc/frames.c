/* The Ruby frames of the heap profiler's samples (DESIGN.md 10).
 *
 * The core samples allocations; at a sample it calls frames_hook (below),
 * registered with trimalloc_prof_set_frames_hook, for the Ruby frames of the
 * allocating thread. The hook runs inside malloc, so it:
 *   - reads frames only when this thread is a Ruby thread that holds the GVL
 *     (ruby_native_thread_p && ruby_thread_has_gvl_p) and is not inside the
 *     GC (rb_during_gc: compaction moves objects); otherwise it returns no
 *     frame, and never waits for the GVL (a native thread's malloc would
 *     wait for a Ruby thread that may be joining it: scalene #395);
 *   - reads them with rb_profile_frames, which fills VALUEs (a method entry
 *     or an iseq) without allocating; the key given to the core is the VALUE;
 *   - keeps every key ever given in a table of its own (core/bind's
 *     ta_bind_keys_t: mmap'ed once, fixed size, it grows by touching pages,
 *     never by malloc), marked with
 *     rb_gc_mark from a T_DATA object's mark function: the objects stay
 *     alive and pinned against compaction, so a key's address never comes to
 *     mean another method. A full table drops the frame and its callers
 *     (counted) rather than hand the core a key it cannot pin;
 *   - names nothing: rb_profile_frame_full_label allocates Ruby strings. New
 *     keys are named later, on a Ruby thread, by a postponed job the hook
 *     schedules (rb_postponed_job_register_one is async-signal safe), and all
 *     of them before every dump (Profile.dump/top call the namer first).
 * Every touch of the table is made with the GVL held (the hook, the namer,
 * the mark function), so it needs no lock.
 *
 * The hook is registered, and keys named, through core/bind/bind_frames.c,
 * which finds the core as bind_backend.c does: the extension never links
 * it. Trimalloc::Profile itself (start, dump, tags) is profile.c. */
#include "trimalloc_ext.h" /* first: ruby/config.h defines _GNU_SOURCE (RTLD_DEFAULT) */

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include <ruby/debug.h>
#include <ruby/thread.h>

/* Exported by libruby for years (ffi, fiddle, pycall use it); in a public
 * header only from Ruby 4.0: 1 for a Ruby thread outside a blocking region. */
int ruby_thread_has_gvl_p(void);

#if defined(HAVE_RB_POSTPONED_JOB_PREREGISTER) && defined(HAVE_RB_POSTPONED_JOB_TRIGGER)
#define TA_PREREGISTERED_JOB 1
static rb_postponed_job_handle_t name_job_handle;
#else
#define TA_PREREGISTERED_JOB 0
#endif

#define KEYS_MAX (1u << 18)      /* distinct frames kept: 2 MiB of address space */
#define FRAMES_MAX 128           /* frames read per sample, at most */

/* Every frame VALUE handed to the core, in order, and the counters
 * (core/bind's ta_bind_walker_t); hooked: the profiler is there and the hook
 * is registered (ta_bind_frames_set_hook). */
static ta_bind_walker_t ft;
static int test_defer; /* tests: no postponed naming, only before a dump */
static VALUE holder;   /* the T_DATA whose mark function marks the keys */

/* No thread-local re-entry guard here: the first touch of a __thread
 * variable of a dlopen'ed object calls __tls_get_addr, which may malloc
 * (inside malloc: memray #336). Nothing the hook calls allocates, and the
 * core sets its own guard around the hook. */

static void mark_keys(void *p) {
  (void)p;
  for (size_t i = 0; i < ft.table.n; i++) rb_gc_mark((VALUE)ft.table.keys[i]); /* marks and pins */
}

static size_t keys_memsize(const void *p) {
  (void)p;
  return ft.table.n * (sizeof(VALUE) + 2 * sizeof(uint32_t));
}

static const rb_data_type_t keys_type = {
    .wrap_struct_name = "trimalloc_profile_frames",
    .function = {.dmark = mark_keys, .dsize = keys_memsize}, /* no dcompact: the keys are pinned */
    /* not RUBY_TYPED_WB_PROTECTED: keys are added without a write barrier
     * (inside malloc), so every GC, minor ones too, marks them all */
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

/* ---- naming (a Ruby thread, the GVL held; allocates) ---- */

/* The frame's file: "" for a C method (Ruby says "<cfunc>") or none. */
static const char *file_of(VALUE path) {
  if (!RB_TYPE_P(path, T_STRING)) return "";
  const char *p = StringValueCStr(path);
  return strcmp(p, "<cfunc>") == 0 ? "" : p;
}

static VALUE name_pending_body(VALUE unused) {
  (void)unused;
  /* keys appended meanwhile (the allocations below may be sampled) are named
   * by this same loop */
  uint64_t k;
  while (ta_bind_walker_next(&ft, &k)) {
    VALUE key = (VALUE)k;
    VALUE label = rb_profile_frame_full_label(key);
    VALUE path = rb_profile_frame_absolute_path(key);
    if (NIL_P(path)) path = rb_profile_frame_path(key);
    if (NIL_P(label)) label = rb_str_new_cstr("(unknown)");
    label = rb_str_new_frozen(label);
    if (!NIL_P(path)) path = rb_str_new_frozen(path);
    ta_bind_walker_name(&ft, StringValueCStr(label), file_of(path)); /* refused: stays unnamed */
    RB_GC_GUARD(label);
    RB_GC_GUARD(path);
  }
  return Qnil;
}

/* Names every key not yet named. Never raises (it runs in a postponed job). */
void ta_rb_frames_name_pending(void) {
  if (!ft.hooked || ft.named >= ft.table.n) return;
  int state = 0;
  rb_protect(name_pending_body, Qnil, &state);
  if (state) rb_set_errinfo(Qnil);
}

static void name_job(void *unused) {
  (void)unused;
  ta_rb_frames_name_pending();
}

/* ---- the hook (inside malloc: allocates nothing, takes no lock) ----
 * Cost per sample: the three checks (a TLS read each), rb_profile_frames
 * (a walk of the control frames, no allocation) and a probe of the table
 * per frame. */

static int read_frames(uint64_t *keys, int32_t *lines, int max) {
  VALUE buf[FRAMES_MAX];
  int lns[FRAMES_MAX];
  if (max > FRAMES_MAX) max = FRAMES_MAX;
  int n = rb_profile_frames(0, max, buf, lns);
  int out = 0;
  while (out < n && ta_bind_walker_keep(&ft, buf[out])) {
    keys[out] = (uint64_t)buf[out];
    lines[out] = lns[out];
    out++;
  }
  return out;
}

static int frames_hook(uint64_t *keys, int32_t *lines, int max) {
  if (max <= 0 || !ft.table.slots) return 0;
  if (!ruby_native_thread_p() || !ruby_thread_has_gvl_p() || rb_during_gc()) {
    atomic_fetch_add_explicit(&ft.skipped, 1, memory_order_relaxed);
    return 0;
  }
  int n = read_frames(keys, lines, max);
  ft.samples += n > 0;
  if (ft.named < ft.table.n && !test_defer) {
#if TA_PREREGISTERED_JOB
    rb_postponed_job_trigger(name_job_handle);
#else
    rb_postponed_job_register_one(0, name_job, NULL);
#endif
  }
  return n;
}

/* Ends frame reading before the VM is torn down: after the END procs,
 * ruby_cleanup frees the threads whose state the hook reads. Registered
 * first, so it runs after the program's own at_exit blocks. Names what the
 * postponed job has not yet: the core's at-exit dump (TRIMALLOC_PROF_AT_EXIT)
 * comes later, when Ruby can no longer name anything. */
static void unhook_at_end(VALUE unused) {
  (void)unused;
  if (!ft.hooked) return;
  ta_rb_frames_name_pending();
  ta_bind_frames_set_hook(NULL, NULL);
}

/* Profile.__name_frames: names the frames seen so far now (tests). */
static VALUE p_name_frames(VALUE self) {
  ta_rb_frames_name_pending();
  return Qnil;
}

/* Profile.frame_stats -> {frames:, named:, dropped:, unnamed:, samples:,
 * skipped:, hooked:}: the frame table's counters (frames seen, named, left
 * out because the table was full, refused a name by the core), samples
 * given Ruby frames, hook calls on a thread without the GVL or in the GC,
 * and whether the hook is registered. */
static VALUE p_frame_stats(VALUE self) {
  ta_bind_field_t f[TA_BIND_WALKER_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_walker_fields(&ft, f));
}

/* Profile.__frames_now (tests): runs the hook here, as a sample would, and
 * returns [[label, path, line], ...] leaf first, named from the table's keys. */
static VALUE p_frames_now(VALUE self) {
  uint64_t keys[FRAMES_MAX];
  int32_t lines[FRAMES_MAX];
  int n = frames_hook(keys, lines, FRAMES_MAX);
  VALUE out = rb_ary_new_capa(n);
  for (int i = 0; i < n; i++) {
    VALUE k = (VALUE)keys[i];
    rb_ary_push(out, rb_ary_new_from_args(3, rb_profile_frame_full_label(k), rb_profile_frame_absolute_path(k),
                                          INT2NUM(lines[i])));
  }
  return out;
}

/* Profile.__frames_without_gvl (tests): the hook run with the GVL released,
 * as a malloc in a C extension's blocking region: its frame count. */
static void *hook_nogvl(void *p) {
  uint64_t keys[FRAMES_MAX];
  int32_t lines[FRAMES_MAX];
  *(int *)p = frames_hook(keys, lines, FRAMES_MAX);
  return NULL;
}

static VALUE p_frames_without_gvl(VALUE self) {
  int n = -1;
  rb_thread_call_without_gvl(hook_nogvl, &n, NULL, NULL);
  return INT2NUM(n);
}

/* Profile.__test_defer_naming(bool) (tests): frames are named only before
 * a dump, so that the GC may move things between a sample and its naming. */
static VALUE p_test_defer_naming(VALUE self, VALUE on) {
  test_defer = RTEST(on);
  return Qnil;
}

/* Profile.__hook_ns(n) (measurements): runs the hook n times here; the mean
 * nanoseconds per call (what a sample's Ruby frames cost at this depth). */
static VALUE p_hook_ns(VALUE self, VALUE times) {
  int got;
  return DBL2NUM(ta_bind_frames_cost(frames_hook, NUM2LONG(times), 64, &got));
}

/* Profile.__test_table_full(bool) (tests): the table refuses new keys. */
static VALUE p_test_table_full(VALUE self, VALUE on) {
  ft.test_full = RTEST(on);
  return Qnil;
}

void ta_rb_init_frames(void) {
  VALUE m = rb_define_module_under(ta_rb_mTrimalloc, "Profile");
  holder = TypedData_Wrap_Struct(rb_cObject, &keys_type, &ft);
  rb_gc_register_mark_object(holder);
#if TA_PREREGISTERED_JOB
  name_job_handle = rb_postponed_job_preregister(0, name_job, NULL);
#endif
  /* no table (mmap failed): native frames only */
  if (ta_bind_keys_init(&ft.table, KEYS_MAX) == 0) {
    ft.hooked = strcmp(ta_bind_frames_register(frames_hook, "rb_vm_exec", 0), TA_BIND_FRAMES_REGISTERED) == 0;
    if (ft.hooked) rb_set_end_proc(unhook_at_end, Qnil);
  }

  VALUE s = rb_singleton_class(m);
  rb_define_singleton_method(m, "frame_stats", p_frame_stats, 0);
  rb_define_private_method(s, "__name_frames", p_name_frames, 0);
  rb_define_private_method(s, "__frames_now", p_frames_now, 0);
  rb_define_private_method(s, "__frames_without_gvl", p_frames_without_gvl, 0);
  rb_define_private_method(s, "__test_table_full", p_test_table_full, 1);
  rb_define_private_method(s, "__hook_ns", p_hook_ns, 1);
  rb_define_private_method(s, "__test_defer_naming", p_test_defer_naming, 1);
}
