/* Options: the table (names, get/set, EINVAL, ERANGE) and the environment
 * (TRIMALLOC_<NAME> read once at start; a bad value warns once on stderr and
 * keeps the default; SHOW_STATS and VERBOSE print). The environment cases run
 * this program again as a child with the variables set. The v2 options
 * (arenas, tcache_bytes, background) have their defaults and ranges, are
 * read from the environment, and verbose says whether the purger runs. */
#include <limits.h>
#include <pthread.h>
#include <sys/wait.h>

#include "check.h"
#include "../../core/prim.h" /* ta_prim_ncpus: internal, linked from the static library */

static const char *const known[] = {"purge_delay_ms", "unmap_delay_ms", "show_stats", "verbose"};
#define N_KNOWN 4

static void test_option_names(void) {
  int found[N_KNOWN] = {0};
  size_t count = 0;
  for (size_t i = 0; i < 100; i++) {
    const char *name = trimalloc_option_name(i);
    if (!name) break;
    count++;
    long long v;
    CHECK(trimalloc_option_get(name, &v) == 0, "listed option %s cannot be read", name);
    for (int k = 0; k < N_KNOWN; k++)
      if (!strcmp(name, known[k])) found[k]++;
  }
  CHECK(count >= N_KNOWN && count < 100, "%zu options", count);
  CHECK(trimalloc_option_name(count) == NULL && trimalloc_option_name(SIZE_MAX) == NULL);
  for (int k = 0; k < N_KNOWN; k++) CHECK(found[k] == 1, "%s listed %d times", known[k], found[k]);
}

/* v2's options: defaults and ranges. arenas: 0 (the number of CPUs) or
 * 1..64; tcache_bytes: 262144 by default, 0 allowed; background: 1 or 0. */
static void test_v2_options(void) {
  long long v = -1, cpus = sysconf(_SC_NPROCESSORS_ONLN);
  CHECK(trimalloc_option_get("arenas", &v) == 0 && (v == 0 || v == cpus), "arenas default %lld (%lld CPUs)", v,
        cpus);
  long long arenas = v;
  for (long long a = 1; a <= 64; a *= 2) {
    CHECK(trimalloc_option_set("arenas", a) == 0 && trimalloc_option_get("arenas", &v) == 0 && v == a,
          "arenas = %lld: got %lld", a, v);
    /* later refills use the new count: allocation goes on working */
    void *p = trimalloc_malloc(100);
    CHECK(p != NULL);
    trimalloc_free(p);
  }
  CHECK(trimalloc_option_set("arenas", 65) == ERANGE, "arenas = 65 accepted");
  CHECK(trimalloc_option_set("arenas", -1) == ERANGE, "arenas = -1 accepted");
  CHECK(trimalloc_option_set("arenas", arenas) == 0);
  CHECK(trimalloc_option_get("tcache_bytes", &v) == 0 && v == 262144, "tcache_bytes default %lld", v);
  CHECK(trimalloc_option_set("tcache_bytes", -1) == ERANGE, "tcache_bytes = -1 accepted");
  CHECK(trimalloc_option_set("tcache_bytes", 0) == 0 && trimalloc_option_get("tcache_bytes", &v) == 0 && v == 0);
  CHECK(trimalloc_option_set("tcache_bytes", 262144) == 0);
  CHECK(trimalloc_option_get("background", &v) == 0 && v == 1, "background default %lld", v);
  CHECK(trimalloc_option_set("background", -1) == ERANGE, "background = -1 accepted");
  CHECK(trimalloc_option_set("background", 2) == ERANGE, "background = 2 accepted");
}

static void test_option_get_set_roundtrip(void) {
  for (int k = 0; k < N_KNOWN; k++) {
    long long old = -12345, v = -12345;
    CHECK(trimalloc_option_get(known[k], &old) == 0 && old != -12345, "get %s", known[k]);
    long long values[] = {0, 1, old};
    for (int i = 0; i < 3; i++) {
      int r = trimalloc_option_set(known[k], values[i]);
      CHECK(r == 0, "set %s = %lld returned %d", known[k], values[i], r);
      CHECK(trimalloc_option_get(known[k], &v) == 0 && v == values[i], "%s: set %lld, got %lld", known[k],
            values[i], v);
    }
  }
  long long v = 0;
  CHECK(trimalloc_option_set("purge_delay_ms", 250) == 0);
  CHECK(trimalloc_option_get("purge_delay_ms", &v) == 0 && v == 250);
  CHECK(trimalloc_option_set("unmap_delay_ms", 1500) == 0);
  CHECK(trimalloc_option_get("unmap_delay_ms", &v) == 0 && v == 1500);
}

static void test_option_errors(void) {
  long long v = 77;
  static const char *const unknown[] = {
      "", "nope", "purge_delay", "purge_delay_ms_x", "TRIMALLOC_PURGE_DELAY_MS", "show stats"};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    CHECK(trimalloc_option_get(unknown[i], &v) == EINVAL, "get \"%s\"", unknown[i]);
    CHECK(trimalloc_option_set(unknown[i], 1) == EINVAL, "set \"%s\"", unknown[i]);
  }
  CHECK(v == 77, "a failed get wrote its output");
  CHECK(trimalloc_option_get(NULL, &v) == EINVAL);
  CHECK(trimalloc_option_set(NULL, 1) == EINVAL);
  CHECK(trimalloc_option_get("verbose", NULL) == EINVAL);
  /* Out of every option's range: ERANGE, and the value stays. */
  for (int k = 0; k < N_KNOWN; k++) {
    long long before = 0, after = 0;
    trimalloc_option_get(known[k], &before);
    int r1 = trimalloc_option_set(known[k], LLONG_MIN);
    int r2 = trimalloc_option_set(known[k], LLONG_MAX);
    trimalloc_option_get(known[k], &after);
    CHECK(r1 == ERANGE, "%s = LLONG_MIN returned %d", known[k], r1);
    CHECK(r2 == ERANGE || r2 == 0, "%s = LLONG_MAX returned %d", known[k], r2);
    if (r2 == 0)
      trimalloc_option_set(known[k], before);
    else
      CHECK(after == before, "%s changed from %lld to %lld by a failed set", known[k], before, after);
  }
}

/* ---- environment, through a child process ---- */

/* The child: allocate from several threads, then print every option. */
static void *child_alloc(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++) trimalloc_free(trimalloc_malloc((size_t)i * 8 + 1));
  return NULL;
}

static int child_options(void) {
  trimalloc_free(trimalloc_malloc(100));
  pthread_t t[3];
  for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, child_alloc, NULL);
  for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
  for (size_t i = 0; trimalloc_option_name(i); i++) {
    long long v = 0;
    trimalloc_option_get(trimalloc_option_name(i), &v);
    printf("%s=%lld\n", trimalloc_option_name(i), v);
  }
  void *keep = trimalloc_malloc(5000); /* something live for the exit stats */
  (void)keep;
  return 0;
}

typedef struct child_out_s {
  char out[4096], err[16384];
  int status;
} child_out_t;

static char self_path[4096];

static void read_file(const char *path, char *buf, size_t len) {
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, len - 1, f) : 0;
  buf[n] = 0;
  if (f) fclose(f);
}

/* Runs this program with --child-options and the given TRIMALLOC_ variables
 * (no others inherited). */
static void run_child(child_out_t *r, const char *const *vars) {
  char out_path[] = "/tmp/trimalloc-test-outXXXXXX", err_path[] = "/tmp/trimalloc-test-errXXXXXX";
  int fo = mkstemp(out_path), fe = mkstemp(err_path);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    extern char **environ;
    for (char **e = environ; *e;) {
      if (!strncmp(*e, "TRIMALLOC_", 10)) {
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(strchr(*e, '=') - *e), *e);
        unsetenv(name);
      } else {
        e++;
      }
    }
    for (int i = 0; vars[i]; i++) putenv((char *)vars[i]);
    dup2(fo, 1);
    dup2(fe, 2);
    exec_self(self_path, "--child-options");
    _exit(127);
  }
  waitpid(pid, &r->status, 0);
  close(fo);
  close(fe);
  read_file(out_path, r->out, sizeof r->out);
  read_file(err_path, r->err, sizeof r->err);
  unlink(out_path);
  unlink(err_path);
}

static long long option_in(const child_out_t *r, const char *name) {
  char key[64];
  snprintf(key, sizeof key, "%s=", name);
  for (const char *l = r->out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
    if (!strncmp(l, key, strlen(key))) return atoll(l + strlen(key));
  return LLONG_MIN;
}

static int count_lines_with(const char *text, const char *needle) {
  int n = 0;
  for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    const char *end = strchr(l, '\n');
    size_t len = end ? (size_t)(end - l) : strlen(l);
    char line[1024];
    snprintf(line, sizeof line, "%.*s", (int)(len < 1023 ? len : 1023), l);
    if (strstr(line, needle)) n++;
  }
  return n;
}

static int ok_exit(const child_out_t *r) {
  return WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0;
}

static child_out_t defaults;

static void test_env_defaults(void) {
  static const char *const none[] = {NULL};
  run_child(&defaults, none);
  CHECK(ok_exit(&defaults), "child status %d, stderr: %s", defaults.status, defaults.err);
  CHECK(defaults.err[0] == 0, "unexpected stderr with no options set: %s", defaults.err);
  for (int k = 0; k < N_KNOWN; k++)
    CHECK(option_in(&defaults, known[k]) != LLONG_MIN, "child did not report %s", known[k]);
  CHECK(option_in(&defaults, "show_stats") == 0 && option_in(&defaults, "verbose") == 0);
}

static void test_env_good_values(void) {
  static const char *const vars[] = {"TRIMALLOC_PURGE_DELAY_MS=250", "TRIMALLOC_UNMAP_DELAY_MS=4321", NULL};
  child_out_t r;
  run_child(&r, vars);
  CHECK(ok_exit(&r), "child status %d", r.status);
  CHECK(option_in(&r, "purge_delay_ms") == 250, "purge_delay_ms=%lld", option_in(&r, "purge_delay_ms"));
  CHECK(option_in(&r, "unmap_delay_ms") == 4321, "unmap_delay_ms=%lld", option_in(&r, "unmap_delay_ms"));
  CHECK(r.err[0] == 0, "a good value must not warn: %s", r.err);
}

static void test_env_v2_values(void) {
  static const char *const vars[] = {"TRIMALLOC_ARENAS=3", "TRIMALLOC_TCACHE_BYTES=0", "TRIMALLOC_BACKGROUND=0",
                                     NULL};
  child_out_t r;
  run_child(&r, vars);
  CHECK(ok_exit(&r), "child status %d, stderr: %s", r.status, r.err);
  CHECK(option_in(&r, "arenas") == 3, "arenas=%lld", option_in(&r, "arenas"));
  CHECK(option_in(&r, "tcache_bytes") == 0, "tcache_bytes=%lld", option_in(&r, "tcache_bytes"));
  CHECK(option_in(&r, "background") == 0, "background=%lld", option_in(&r, "background"));
  CHECK(r.err[0] == 0, "good values must not warn: %s", r.err);
  static const char *const bad[] = {"TRIMALLOC_ARENAS=65", NULL};
  run_child(&r, bad);
  CHECK(ok_exit(&r), "child status %d", r.status);
  CHECK(option_in(&r, "arenas") == option_in(&defaults, "arenas"), "TRIMALLOC_ARENAS=65: arenas=%lld",
        option_in(&r, "arenas"));
  CHECK(count_lines_with(r.err, "TRIMALLOC_ARENAS") == 1, "want one warning naming TRIMALLOC_ARENAS, got: %s",
        r.err);
}

static void test_env_bad_values_warn_once(void) {
  static const char *const bad[] = {"abc", "12abc", "1e3", "99999999999999999999999", " 5x"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char var[128];
    snprintf(var, sizeof var, "TRIMALLOC_PURGE_DELAY_MS=%s", bad[i]);
    const char *const vars[] = {var, NULL};
    child_out_t r;
    run_child(&r, vars);
    CHECK(ok_exit(&r), "'%s': child status %d", bad[i], r.status);
    CHECK(option_in(&r, "purge_delay_ms") == option_in(&defaults, "purge_delay_ms"),
          "'%s': purge_delay_ms=%lld, default %lld", bad[i], option_in(&r, "purge_delay_ms"),
          option_in(&defaults, "purge_delay_ms"));
    CHECK(count_lines_with(r.err, "TRIMALLOC_PURGE_DELAY_MS") == 1 &&
              count_lines_with(r.err, "trimalloc:") == 1 && !strncmp(r.err, "trimalloc:", 10),
          "'%s': want one warning line naming the variable, got: %s", bad[i], r.err);
  }
  const char *const vars[] = {"TRIMALLOC_VERBOSE=maybe", "TRIMALLOC_UNMAP_DELAY_MS=-x", NULL};
  child_out_t r;
  run_child(&r, vars);
  CHECK(ok_exit(&r));
  CHECK(count_lines_with(r.err, "TRIMALLOC_VERBOSE") == 1 &&
            count_lines_with(r.err, "TRIMALLOC_UNMAP_DELAY_MS") == 1,
        "two bad variables, want one warning each: %s", r.err);
  CHECK(option_in(&r, "verbose") == 0 &&
        option_in(&r, "unmap_delay_ms") == option_in(&defaults, "unmap_delay_ms"));
}

static void test_env_show_stats_prints_at_exit(void) {
  static const char *const vars[] = {"TRIMALLOC_SHOW_STATS=1", NULL};
  child_out_t r;
  run_child(&r, vars);
  CHECK(ok_exit(&r));
  CHECK(option_in(&r, "show_stats") == 1);
  const char *line = strstr(r.err, "trimalloc: stats {");
  CHECK(line != NULL && count_lines_with(r.err, "trimalloc: stats ") == 1,
        "want one 'trimalloc: stats {...}' line on stderr, got: %s", r.err);
  if (line) CHECK(strstr(line, "\"allocated\"") && strstr(line, "\"fragmentation\""), "%s", line);
}

static void test_env_verbose_says_active(void) {
  static const char *const vars[] = {"TRIMALLOC_VERBOSE=1", NULL};
  child_out_t r;
  run_child(&r, vars);
  CHECK(ok_exit(&r));
  CHECK(option_in(&r, "verbose") == 1);
  CHECK(!strncmp(r.err, "trimalloc:", 10) && strstr(r.err, "purge_delay_ms"),
        "verbose must say trimalloc is active and with which options, got: %s", r.err);
  CHECK(strstr(r.err, "background") != NULL, "verbose must say whether the background purger runs, got: %s",
        r.err);
}

/* The default arena limit (one per CPU) counts the CPUs the process may
 * run on: with its affinity set to one CPU, one CPU (the host's count
 * before). The cgroup v2 quota (cpu.max) is read the same way; this machine's
 * hybrid cgroups cannot show it. */
static void test_cpus_are_the_process_s(void) {
  unsigned all = ta_prim_ncpus();
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  CHECK(all >= 1 && (long)all <= online, "ta_prim_ncpus %u of %ld online", all, online);
  if (online < 2) {
    fprintf(stdout, "   skipped the affinity case: one CPU online\n");
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() > 0 ? sched_getcpu() : 0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(100);
    _exit((int)ta_prim_ncpus());
  }
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1, "with one CPU in its affinity mask the process counts %d CPUs",
        WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--child-options")) return child_options();
  ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  self_path[n > 0 ? n : 0] = 0;
  RUN(test_option_names);
  RUN(test_v2_options);
  RUN(test_option_get_set_roundtrip);
  RUN(test_option_errors);
  RUN(test_env_defaults);
  RUN(test_env_good_values);
  RUN(test_env_v2_values);
  RUN(test_env_bad_values_warn_once);
  RUN(test_env_show_stats_prints_at_exit);
  RUN(test_env_verbose_says_active);
  RUN(test_cpus_are_the_process_s);
  return check_summary();
}
