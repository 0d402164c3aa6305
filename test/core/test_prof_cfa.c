/* The heap profiler's walk from cached unwind rules (core/prof_cfa.c)
 * against libgcc_s's _Unwind_Backtrace, from the same point:
 *  - the same frames through libc's qsort, through functions built without
 *    frame pointers that put garbage in rbp (their callers' CFA is rbp +
 *    16: a wrong rbp rule gives wrong callers), through a hand-written
 *    function whose return address follows a remember/restore_state
 *    epilogue, and on threads (the end at clone3), walked twice (the second
 *    from the cache), from threads at once, many return addresses (the
 *    table grows while others read it: TSan);
 *  - the give-up path: a frame whose CFA is an expression, and a signal
 *    frame: the cached walk gives up and leaves no frames, libgcc's walks
 *    through, and a sample taken there records libgcc's frames;
 *  - other builds (aarch64, musl): no cached walk; libgcc's (glibc) is kept. */
#include "check.h"
#include "../../core/internal.h"

#include <setjmp.h>
#include <signal.h>
#include <unwind.h>

#define MAXF 64
typedef struct {
  uint64_t cfa[MAXF], gcc[MAXF];
  size_t ncfa, ngcc;
  bool cfa_ok;
} walks_t;

/* In the profiler's section: its frame is skipped by both walks, so the
 * first frame of each is its caller's. */
TA_PROF_PATH static void walk_both(walks_t *out) {
  ta_prof_walk_t w;
  ta_prof_walk_init(&w, out->cfa, MAXF);
  out->cfa_ok = ta_prof_unwind_cfa(&w);
  out->ncfa = w.n;
  ta_prof_walk_init(&w, out->gcc, MAXF);
#if TA_PROF_HAVE_LIBGCC
  _Unwind_Backtrace((_Unwind_Trace_Fn)ta_prof_unwind_step, &w);
#endif
  out->ngcc = w.n;
}

static bool same(const walks_t *x) {
  return x->cfa_ok && x->ncfa == x->ngcc && !memcmp(x->cfa, x->gcc, x->ncfa * sizeof x->cfa[0]);
}

static void show(const char *what, const walks_t *x) {
  printf("%s: cached %s, %zu frames; libgcc %zu frames\n", what, x->cfa_ok ? "ok" : "gave up", x->ncfa, x->ngcc);
  for (size_t i = 0; i < MAXF && (i < x->ncfa || i < x->ngcc); i++)
    printf("  %2zu %#16llx %#16llx%s\n", i, i < x->ncfa ? (unsigned long long)x->cfa[i] : 0ull,
           i < x->ngcc ? (unsigned long long)x->gcc[i] : 0ull, i < x->ncfa && i < x->ngcc && x->cfa[i] == x->gcc[i] ? "" : "  <--");
}

/* Whether a frame lies in [f, f + 512) (the sanitizers' code is longer:
 * 8 KiB there). */
static bool has_pc(const uint64_t *pcs, size_t n, const void *f) {
  uintptr_t len = TEST_SANITIZED ? 8192 : 512;
  for (size_t i = 0; i < n; i++)
    if (pcs[i] >= (uintptr_t)f && pcs[i] < (uintptr_t)f + len) return true;
  return false;
}

#if TA_PROF_CFA
/* ---- functions without frame pointers, rbp garbage ---- */
#define NOFP __attribute__((noinline, noclone, optimize("omit-frame-pointer")))
static walks_t qs;
static volatile int qs_done;

NOFP static int cmp_walk(const void *a, const void *b) {
  if (!qs_done) {
    qs_done = 1;
    walk_both(&qs);
  }
  return (*(const int *)a > *(const int *)b) - (*(const int *)a < *(const int *)b);
}

NOFP static int nofp_sort(int k) {
  volatile char pad[248];
  pad[k % 200] = (char)k;
  int v[40];
  for (int i = 0; i < 40; i++) v[i] = (i * 7919 + k) % 101;
  /* rbp holds garbage across the call (saved by the prologue: the rule
   * says where its value is, which its frame-pointer caller needs) */
  __asm__ volatile("movabs $0x5a5a5a5a5a5a5a50, %%rbp" ::: "rbp");
  qsort(v, 40, sizeof v[0], cmp_walk);
  return v[0] + pad[k % 200];
}

/* two more frames without frame pointers, of other sizes */
NOFP static int nofp_mid(int k) {
  volatile long pad[9];
  pad[k % 9] = k;
  __asm__ volatile("" ::: "rbx", "r12");
  return nofp_sort(k + 1) + (int)pad[k % 9];
}
NOFP static int nofp_top(int k) {
  volatile char pad[1000];
  pad[k % 1000] = (char)k;
  return nofp_mid(k + 1) + pad[k % 1000];
}

/* with frame pointers (this file is built with them) */
static __attribute__((noinline, noclone)) int fp_caller(int k) {
  int r = nofp_top(k) + 1;
  __asm__ volatile("" ::: "memory");
  return r;
}

static void test_qsort_nofp(void) {
  qs_done = 0;
  int r = fp_caller(3);
  CHECK(qs_done, "qsort never called back (%d)", r);
  if (!CHECK(same(&qs), "the cached walk differs from libgcc's through qsort and frames without rbp"))
    show("qsort", &qs);
  CHECK(has_pc(qs.gcc, qs.ngcc, (void *)cmp_walk) && has_pc(qs.gcc, qs.ngcc, (void *)nofp_sort) &&
            has_pc(qs.gcc, qs.ngcc, (void *)fp_caller) && has_pc(qs.gcc, qs.ngcc, (void *)test_qsort_nofp),
        "libgcc's frames lack the test's functions (%zu frames)", qs.ngcc);
  CHECK(qs.ngcc >= 8, "%zu frames", qs.ngcc);
  /* again: the rules from the cache now */
  uint64_t misses = atomic_load(&ta_prof_cfa_giveups);
  qs_done = 0;
  fp_caller(3);
  if (!CHECK(same(&qs), "the second walk (from the cache) differs")) show("qsort again", &qs);
  CHECK(atomic_load(&ta_prof_cfa_giveups) == misses);
}

/* ---- hand-written CFI: remember/restore_state, a noreturn call, an expression ---- */
/* cfa_asm_state(fn, mode): mode 0 calls fn after a restore_state (the
 * row at its return address is the remembered one: CFA rsp + 48, rbp at
 * CFA - 24, rbp itself garbage); mode 1 calls fn (which must not return)
 * as the last instruction of a block with 16 bytes more on the stack, and
 * the row changes at the return address itself (the next block's
 * restore_state), which the walk must not take: libgcc's rule is the row
 * of the call, ra - 1. */
void cfa_asm_state(void (*fn)(void), long mode);
void cfa_asm_expr(void (*fn)(void));
__asm__(".text\n"
        ".globl cfa_asm_state\n.type cfa_asm_state,@function\n"
        "cfa_asm_state:\n"
        ".cfi_startproc\n"
        "push %rbx\n.cfi_def_cfa_offset 16\n.cfi_offset rbx, -16\n"
        "push %rbp\n.cfi_def_cfa_offset 24\n.cfi_offset rbp, -24\n"
        "sub $24, %rsp\n.cfi_def_cfa_offset 48\n"
        "movabs $0x5a5a5a5a5a5a5a50, %rbp\n"
        "test %rsi, %rsi\n"
        "jnz 2f\n"
        "test %rdi, %rdi\n"
        "jnz 1f\n"
        ".cfi_remember_state\n"
        "add $24, %rsp\n.cfi_def_cfa_offset 24\n"
        "pop %rbp\n.cfi_restore rbp\n.cfi_def_cfa_offset 16\n"
        "pop %rbx\n.cfi_restore rbx\n.cfi_def_cfa_offset 8\n"
        "ret\n"
        "2:\n"
        ".cfi_restore_state\n"
        ".cfi_remember_state\n"
        "sub $16, %rsp\n.cfi_def_cfa_offset 64\n"
        "call *%rdi\n" /* does not return */
        "1:\n"
        ".cfi_restore_state\n"
        "call *%rdi\n"
        "add $24, %rsp\n.cfi_def_cfa_offset 24\n"
        "pop %rbp\n.cfi_def_cfa_offset 16\n"
        "pop %rbx\n.cfi_def_cfa_offset 8\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size cfa_asm_state, .-cfa_asm_state\n"
        /* CFA = rbp + 16 as an expression (DW_CFA_def_cfa_expression,
         * DW_OP_breg6 16): libgcc's unwinder knows it, the cache does not */
        ".globl cfa_asm_expr\n.type cfa_asm_expr,@function\n"
        "cfa_asm_expr:\n"
        ".cfi_startproc\n"
        "push %rbp\n.cfi_def_cfa_offset 16\n.cfi_offset rbp, -16\n"
        "mov %rsp, %rbp\n"
        ".cfi_escape 0x0f, 0x02, 0x76, 0x10\n"
        "call *%rdi\n"
        "pop %rbp\n.cfi_def_cfa rsp, 8\n"
        "ret\n"
        ".cfi_endproc\n"
        ".size cfa_asm_expr, .-cfa_asm_expr\n");

static walks_t st, nr;
static jmp_buf nr_jump;
static void state_leaf(void) {
  walk_both(&st);
  __asm__ volatile("" ::: "memory"); /* not a tail call */
}
static void noreturn_leaf(void) {
  walk_both(&nr);
  longjmp(nr_jump, 1);
}
static __attribute__((noinline, noclone)) void fp_state(long mode) {
  if (mode == 0) cfa_asm_state(state_leaf, 0);
  else if (!setjmp(nr_jump)) cfa_asm_state(noreturn_leaf, 1);
  __asm__ volatile("" ::: "memory");
}

static void test_remember_state(void) {
  fp_state(0);
  if (!CHECK(same(&st), "through a remember/restore_state epilogue")) show("state", &st);
  CHECK(has_pc(st.gcc, st.ngcc, (void *)fp_state) && has_pc(st.gcc, st.ngcc, (void *)test_remember_state),
        "libgcc's frames lack the callers");
  fp_state(1);
  if (!CHECK(same(&nr), "through a noreturn call followed by another row")) show("noreturn", &nr);
  CHECK(has_pc(nr.gcc, nr.ngcc, (void *)fp_state) && has_pc(nr.gcc, nr.ngcc, (void *)test_remember_state),
        "libgcc's frames lack the callers");
}

/* ---- the give-up path ---- */
static walks_t ex;
static void *ex_block;
static void expr_leaf(void) {
  walk_both(&ex);
  __asm__ volatile("" ::: "memory"); /* not a tail call */
}
static void expr_alloc(void) {
  ex_block = trimalloc_malloc(4 << 20); /* >= R: sampled */
}
static __attribute__((noinline, noclone)) void fp_expr(void (*fn)(void)) {
  cfa_asm_expr(fn);
  __asm__ volatile("" ::: "memory");
}

static bool trace_has(uint32_t from, const void *f) {
  for (uint32_t i = from; i < ta_prof_traces(); i++) {
    ta_prof_trace_t *t = ta_prof_trace(i);
    if (has_pc(t->pcs, t->n, f)) return true;
  }
  return false;
}

static void test_give_up_expression(void) {
  uint64_t g = atomic_load(&ta_prof_cfa_giveups);
  fp_expr(expr_leaf);
  CHECK(!ex.cfa_ok && ex.ncfa == 0, "the cached walk went through an expression (%zu frames)", ex.ncfa);
  CHECK(atomic_load(&ta_prof_cfa_giveups) > g);
  CHECK(has_pc(ex.gcc, ex.ngcc, (void *)fp_expr) && has_pc(ex.gcc, ex.ngcc, (void *)test_give_up_expression),
        "libgcc's walk stops at the expression (%zu frames)", ex.ngcc);
  /* a sample there: libgcc's frames, past the expression */
  CHECK(trimalloc_prof_start(512 << 10) == 0);
  uint32_t from = ta_prof_traces();
  g = atomic_load(&ta_prof_cfa_giveups);
  fp_expr(expr_alloc);
  trimalloc_prof_stop();
  CHECK(atomic_load(&ta_prof_cfa_giveups) > g, "the sample's walk did not give up");
  CHECK(trace_has(from, (void *)expr_alloc) && trace_has(from, (void *)fp_expr) &&
            trace_has(from, (void *)test_give_up_expression),
        "the sample's trace lacks the callers past the expression");
  trimalloc_free(ex_block);
}

static walks_t sg;
static void on_usr1(int sig) {
  (void)sig;
  walk_both(&sg);
  __asm__ volatile("" ::: "memory"); /* not a tail call */
}
static __attribute__((noinline, noclone)) void fp_raise(void) {
  raise(SIGUSR1);
  __asm__ volatile("" ::: "memory");
}

static void test_give_up_signal(void) {
  struct sigaction sa = {0}, old;
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, &old);
  fp_raise();
  sigaction(SIGUSR1, &old, NULL);
  CHECK(!sg.cfa_ok && sg.ncfa == 0, "the cached walk went through a signal frame (%zu frames)", sg.ncfa);
  CHECK(has_pc(sg.gcc, sg.ngcc, (void *)on_usr1) && has_pc(sg.gcc, sg.ngcc, (void *)fp_raise),
        "libgcc's walk stops at the signal frame (%zu frames)", sg.ngcc);
}

/* ---- threads: the end of a thread's stack, many return addresses ---- */
/* three functions of 48 call sites each, calling each other: 144 return
 * addresses and more (the table starts at 256 entries, grows at half full) */
#define FAN(N) \
  case N: r = fans[(I + 1) % 3](k / 7, d - 1) + N; break;
#define FAN8(N) FAN(N##0) FAN(N##1) FAN(N##2) FAN(N##3) FAN(N##4) FAN(N##5) FAN(N##6) FAN(N##7)
static __thread walks_t *fan_out;
static int (*volatile fans[3])(unsigned, int); /* calls, not loops */
#define DEFINE_FAN(NAME)                                             \
  static __attribute__((noinline, noclone)) int NAME(unsigned k, int d) { \
    int r = 0;                                                       \
    if (!d) {                                                        \
      walk_both(fan_out);                                            \
      return 0;                                                      \
    }                                                                \
    switch (k % 8 + 10 * (1 + k / 8 % 6)) {                          \
      FAN8(1) FAN8(2) FAN8(3) FAN8(4) FAN8(5) FAN8(6)                \
    }                                                                \
    return r;                                                        \
  }
#define I 0
DEFINE_FAN(fan0)
#undef I
#define I 1
DEFINE_FAN(fan1)
#undef I
#define I 2
DEFINE_FAN(fan2)
#undef I

static void *fan_thread(void *arg) {
  walks_t *x = malloc(sizeof *x);
  fan_out = x;
  long bad = 0;
  unsigned k = (unsigned)(uintptr_t)arg * 2654435761u;
  for (int i = 0; i < 300; i++) {
    k = k * 1103515245u + 12345u;
    fans[i % 3](k, 5);
    if (!same(x)) {
      if (!bad) show("thread", x);
      bad++;
    }
  }
  free(x);
  return (void *)bad;
}

static void test_threads(void) {
  fans[0] = fan0, fans[1] = fan1, fans[2] = fan2;
  pthread_t th[4];
  long bad = 0;
  for (long t = 0; t < 4; t++) pthread_create(&th[t], NULL, fan_thread, (void *)(t + 1));
  for (int t = 0; t < 4; t++) {
    void *r;
    pthread_join(th[t], &r);
    bad += (long)r;
  }
  CHECK(bad == 0, "%ld of 1200 walks on threads differ from libgcc's", bad);
  CHECK(atomic_load(&ta_prof_cfa_rules) > 128, "%llu rules cached: the table never grew",
        (unsigned long long)atomic_load(&ta_prof_cfa_rules));
}

int main(void) {
  RUN(test_qsort_nofp);
  RUN(test_remember_state);
  RUN(test_give_up_expression);
  RUN(test_give_up_signal);
  RUN(test_threads);
  return check_summary();
}
#else
/* No cached walk in this build (not x86-64, or no FDE files): internal.h's
 * inline ta_prof_unwind_cfa returns false at once, and libgcc's walk
 * (glibc) or the frame pointers (musl) are what samples use. */
static walks_t one;
static __attribute__((noinline, noclone)) void test_no_cache(void) {
  walk_both(&one);
  CHECK(!one.cfa_ok && one.ncfa == 0);
#if TA_PROF_HAVE_LIBGCC
  CHECK(has_pc(one.gcc, one.ngcc, (void *)test_no_cache), "libgcc's walk lacks its caller (%zu frames)", one.ngcc);
#endif
}
int main(void) {
  RUN(test_no_cache);
  return check_summary();
}
#endif
