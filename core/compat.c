/* glibc's malloc introspection, answered for trimalloc's heap: mallinfo2,
 * mallinfo, malloc_stats, malloc_info, mallopt, and the old cfree. Without
 * them a preloaded program asking glibc got glibc's empty arena (mallinfo2
 * said 0 bytes in use). Only in the preload library (TA_ALIAS); the structs
 * are written out here, as musl declares none of these. They read
 * trimalloc_stats: no lock is held while they print. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>

struct ta_mallinfo2 { /* glibc 2.33+'s struct mallinfo2, field for field */
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
struct ta_mallinfo { /* struct mallinfo: ints, clamped here instead of wrapping past 2 GiB */
  int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

/* arena: what the heap holds committed (resident); hblks/hblkhd: blocks with
 * their own mapping; uordblks: bytes in live blocks (allocated); fordblks:
 * resident but free (what a trim returns); keepcost: 0 (no top chunk);
 * usmblks: the peak of active. The rest (glibc's free-chunk counts) 0. */
TA_HIDDEN struct ta_mallinfo2 ta_compat_mallinfo2(void) {
  trimalloc_stats_t s;
  trimalloc_stats(&s, sizeof s);
  struct ta_mallinfo2 m = {0};
  m.arena = s.resident;
  m.hblks = s.huge_allocations;
  m.usmblks = s.peak_active;
  m.uordblks = s.allocated;
  m.fordblks = s.resident > s.allocated ? s.resident - s.allocated : 0;
  return m;
}

static int clamp(size_t v) {
  return v > INT_MAX ? INT_MAX : (int)v;
}

TA_HIDDEN struct ta_mallinfo ta_compat_mallinfo(void) {
  struct ta_mallinfo2 m = ta_compat_mallinfo2();
  struct ta_mallinfo o = {clamp(m.arena),   clamp(m.ordblks),  clamp(m.smblks),   clamp(m.hblks),
                          clamp(m.hblkhd),  clamp(m.usmblks),  clamp(m.fsmblks),  clamp(m.uordblks),
                          clamp(m.fordblks), clamp(m.keepcost)};
  return o;
}

/* glibc's layout, so that what reads it goes on working. */
TA_HIDDEN void ta_compat_malloc_stats(void) {
  trimalloc_stats_t s;
  trimalloc_stats(&s, sizeof s);
  fprintf(stderr,
          "trimalloc (%llu arenas):\nsystem bytes     = %10llu\nin use bytes     = %10llu\n"
          "Total (incl. mmap):\nsystem bytes     = %10llu\nin use bytes     = %10llu\n"
          "max mmap regions = %10llu\nmax mmap bytes   = %10llu\n",
          (unsigned long long)s.arenas, (unsigned long long)s.resident, (unsigned long long)s.allocated,
          (unsigned long long)s.resident, (unsigned long long)s.allocated,
          (unsigned long long)s.huge_allocations, (unsigned long long)s.peak_active);
}

/* An XML document as glibc's malloc_info writes one (options must be 0). */
TA_HIDDEN int ta_compat_malloc_info(int options, FILE *fp) {
  if (options != 0 || !fp) {
    errno = EINVAL;
    return -1;
  }
  trimalloc_stats_t s;
  trimalloc_stats(&s, sizeof s);
  fprintf(fp,
          "<malloc version=\"trimalloc-1\">\n"
          "<total type=\"allocated\" size=\"%llu\"/>\n"
          "<total type=\"dirty\" size=\"%llu\"/>\n"
          "<total type=\"tcache\" size=\"%llu\"/>\n"
          "<total type=\"huge\" count=\"%llu\"/>\n"
          "<system type=\"current\" size=\"%llu\"/>\n"
          "<system type=\"max\" size=\"%llu\"/>\n"
          "<aspace type=\"total\" size=\"%llu\"/>\n"
          "<aspace type=\"purged\" size=\"%llu\"/>\n"
          "</malloc>\n",
          (unsigned long long)s.allocated, (unsigned long long)s.dirty, (unsigned long long)s.tcache_bytes,
          (unsigned long long)s.huge_allocations, (unsigned long long)s.resident,
          (unsigned long long)s.peak_active, (unsigned long long)s.mapped, (unsigned long long)s.purged);
  return 0;
}

/* glibc's parameters. M_ARENA_MAX sets `arenas` (1 if taken); the others
 * (trim threshold, top pad, mmap threshold and count, fastbins, checking,
 * perturbation, arena test) have no meaning here: 0, as glibc answers a
 * parameter it does not know, so a caller can tell. */
#define TA_M_ARENA_MAX (-8)
TA_HIDDEN int ta_compat_mallopt(int param, int value) {
  if (param == TA_M_ARENA_MAX && value >= 0) return trimalloc_option_set("arenas", value) == 0;
  return 0;
}

TA_HIDDEN void ta_compat_cfree(void *p) {
  trimalloc_free(p);
}

TA_ALIAS(mallinfo2, ta_compat_mallinfo2)
TA_ALIAS(mallinfo, ta_compat_mallinfo)
TA_ALIAS(malloc_stats, ta_compat_malloc_stats)
TA_ALIAS(malloc_info, ta_compat_malloc_info)
TA_ALIAS(mallopt, ta_compat_mallopt)
TA_ALIAS(cfree, ta_compat_cfree)
