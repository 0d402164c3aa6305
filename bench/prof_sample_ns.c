/* The heap profiler's cost per sample: malloc+free of 64 bytes at interval 1
 * (every allocation sampled, then freed) from 40 frames below a stand-in for
 * an interpreter's eval function plus 3 above it, against sampling off; with
 * no frames hook (the whole native stack is unwound, at most 64 frames) and
 * with one (the unwinder stops at the eval function; the hook gives 40
 * interpreter frames). TRIMALLOC_PROF_UNWIND=2 selects the frame-pointer
 * walk. Linked with the core's static library and -rdynamic (dladdr1 finds
 * the eval function's extent):
 *   cc -O2 -rdynamic -o /tmp/prof_sample_ns bench/prof_sample_ns.c core/build/libtrimalloc.a -pthread
 *   /tmp/prof_sample_ns off|nohook|hook */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../core/trimalloc.h"

static int frames(uint64_t *k, int32_t *l, int max) {
  int n = max < 40 ? max : 40;
  for (int i = 0; i < n; i++) k[i] = 0x1000 + (uint64_t)i, l[i] = i;
  return n;
}
#define STAY __asm__ volatile("" ::: "memory") /* no tail call: every frame stays */
__attribute__((noinline)) void *leaf2(size_t n) { void *p = trimalloc_malloc(n); STAY; return p; }
__attribute__((noinline)) void *leaf1(size_t n) { void *p = leaf2(n); STAY; return p; }
__attribute__((noinline)) void *eval(size_t n) { void *p = leaf1(n); STAY; return p; }
__attribute__((noinline)) void *deep(int d, size_t n) { void *p = d ? deep(d - 1, n) : eval(n); STAY; return p; }

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "off";
  int n = 200000;
  if (strcmp(mode, "off")) trimalloc_prof_start(1);
  if (!strcmp(mode, "hook")) trimalloc_prof_set_frames_hook(frames, (const void *)eval);
  for (int i = 0; i < 1000; i++) trimalloc_free(deep(40, 64)); /* warm up */
  double t0 = now();
  for (int i = 0; i < n; i++) trimalloc_free(deep(40, 64));
  printf("%-6s %.0f ns per malloc+free\n", mode, (now() - t0) / n * 1e9);
  return 0;
}
