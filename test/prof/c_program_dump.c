/* A C program's live heap profile, written by the core itself
 * (trimalloc_prof_dump) as a program on trimalloc writes it: linked against
 * the library (test/python/test_speedscope.py links the package's own
 * libtrimalloc.so), every allocation sampled (interval 1), interpreter
 * frames from a frames hook named the way the Ruby binding names them.
 *
 * Holds, at the dump:
 *   render_site: 8 live blocks of 100,000 bytes under
 *     Billing::InvoicesController#show (app/controllers/invoices_controller.rb:7)
 *     > Billing::Invoice#render (app/models/invoice.rb:12)
 *   post_site: 4 blocks of 50,000 bytes made, 2 freed, under
 *     Billing::InvoicesController#show (line 9) > Billing::Ledger#post
 *     (app/models/ledger.rb:30): its alloc_space is twice its inuse_space
 *   c_only_site: 3 live blocks of 70,000 bytes from plain C (no hook frames:
 *     not under eval, and the hook gives none), so native frames up to _start
 * Usage: c_program_dump PATH */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "trimalloc.h"

enum { RENDER = 1, POST = 2 };
static int path; /* which interpreter call path the next sample is under (0: none) */

static int frames(uint64_t *keys, int32_t *lines, int max) {
  if (!path || max < 2) return 0;
  keys[0] = path == RENDER ? 0x1001 : 0x1002, lines[0] = path == RENDER ? 12 : 30;
  keys[1] = 0x1000, lines[1] = path == RENDER ? 7 : 9;
  return 2;
}

#define STAY __asm__ volatile("" ::: "memory") /* no tail call: every frame stays */
__attribute__((noinline)) void *leaf(size_t n) { void *p = trimalloc_malloc(n); STAY; return p; }
/* stands in for the interpreter's eval function: the hook's frames replace it */
__attribute__((noinline)) void *eval(size_t n) { void *p = leaf(n); STAY; return p; }
__attribute__((noinline)) void *c_only_site(size_t n) { void *p = leaf(n); STAY; return p; }

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PATH\n", argv[0]);
    return 2;
  }
  trimalloc_prof_name_frame(0x1000, "Billing::InvoicesController#show", "app/controllers/invoices_controller.rb");
  trimalloc_prof_name_frame(0x1001, "Billing::Invoice#render", "app/models/invoice.rb");
  trimalloc_prof_name_frame(0x1002, "Billing::Ledger#post", "app/models/ledger.rb");
  if (trimalloc_prof_start(1) != 0 || trimalloc_prof_set_frames_hook(frames, (const void *)eval) != 0) {
    fprintf(stderr, "the profiler did not start\n");
    return 1;
  }
  static void *keep[16];
  int k = 0;
  path = RENDER;
  for (int i = 0; i < 8; i++) keep[k++] = eval(100000);
  path = POST;
  void *gone[2];
  for (int i = 0; i < 2; i++) keep[k++] = eval(50000), gone[i] = eval(50000);
  path = 0;
  for (int i = 0; i < 3; i++) keep[k++] = c_only_site(70000);
  for (int i = 0; i < 2; i++) trimalloc_free(gone[i]);
  int err = trimalloc_prof_dump(argv[1], TRIMALLOC_PROF_LIVE, NULL, 0);
  if (err) {
    fprintf(stderr, "trimalloc_prof_dump(%s): error %d\n", argv[1], err);
    return 1;
  }
  for (int i = 0; i < k; i++) trimalloc_free(keep[i]);
  return 0;
}
