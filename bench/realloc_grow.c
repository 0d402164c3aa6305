/* Realloc growth: `--strings` strings live at once, each grown by appending
 * 1..32 bytes at a time with realloc to the exact new length (as naive string
 * builders do). A string that reaches its target length (log-uniform,
 * 64 B..64 KiB) is checked, freed, and started again. The allocator's
 * in-place growth and its size-class boundaries decide the cost. */
#include "common.h"

typedef struct {
  char *s;
  size_t len, target;
} str_t;

int main(int argc, char **argv) {
  long long appends = bench_opt(argc, argv, "--appends", 20000000);
  long long nstr = bench_opt(argc, argv, "--strings", 1000);
  bench_rng_t rng = {0x13198A2E03707344ULL};
  str_t *v = bench_xmalloc((size_t)nstr * sizeof *v);
  static const char chunk[33] = "abcdefghijklmnopqrstuvwxyz012345";
  uint64_t sum = 0, completed = 0;

  for (long long i = 0; i < nstr; i++) {
    v[i].s = NULL;
    v[i].len = 0;
    v[i].target = bench_log_range(&rng, 64, 65536);
  }
  double t0 = bench_now();
  for (long long i = 0; i < appends; i++) {
    str_t *x = &v[bench_rand(&rng) % (uint64_t)nstr];
    size_t add = bench_range(&rng, 1, 32);
    char *s = realloc(x->s, x->len + add + 1);
    if (s == NULL) {
      fprintf(stderr, "realloc_grow: realloc failed\n");
      return 2;
    }
    memcpy(s + x->len, chunk, add);
    x->len += add;
    s[x->len] = '\0';
    x->s = s;
    if (x->len >= x->target) {
      sum += (unsigned char)s[0] + (unsigned char)s[x->len - 1];
      if (s[0] != 'a') {
        fprintf(stderr, "realloc_grow: content lost\n");
        return 1;
      }
      free(s);
      x->s = NULL;
      x->len = 0;
      x->target = bench_log_range(&rng, 64, 65536);
      completed++;
    }
  }
  double t1 = bench_now();
  for (long long i = 0; i < nstr; i++) free(v[i].s);
  free(v);
  bench_sink = sum;

  bench_json_t j;
  bench_json_begin(&j, "realloc");
  bench_json_num(&j, "check", (double)sum);
  bench_json_num(&j, "appends", (double)appends);
  bench_json_num(&j, "completed", (double)completed);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_end(&j);
  return 0;
}
