/* Huge blocks (beyond half a segment): a segment-aligned mapping of their own,
 * whose header looks like a segment's so free finds it in O(1). Unmapped on
 * free; grown and shrunk with mremap, never copied. */
#include "internal.h"

#include <errno.h>

_Atomic uint64_t ta_huge_bytes, ta_huge_mapped, ta_huge_count, ta_huge_total;

static size_t round_up(size_t n, size_t to) {
  return (n + to - 1) & ~(to - 1);
}

static void huge_account(ta_segment_t *s, int sign) {
  int64_t usable = (int64_t)s->huge_size * sign, mapped = (int64_t)s->map_size * sign;
  ta_relaxed_add(&ta_huge_bytes, (uint64_t)usable);
  ta_relaxed_add(&ta_huge_mapped, (uint64_t)mapped);
  ta_relaxed_add(&ta_huge_count, (uint64_t)(int64_t)sign);
  ta_active_add(usable);
}

void *ta_huge_alloc(size_t size, size_t align) {
  size_t ps = ta_prim_page_size();
  size_t off = round_up(sizeof(ta_segment_t), align > 64 ? align : 64);
  if (size > PTRDIFF_MAX - off - ps - TA_SEGMENT_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map = round_up(off + size, ps);
  void *p;
  if (ta_prim_map(map, TA_SEGMENT_SIZE, &p) != 0) {
    errno = ENOMEM;
    return NULL;
  }
  ta_segment_t *s = p; /* zeroed */
  s->huge = 1;
  s->map_size = map;
  s->huge_off = off;
  s->huge_size = map - off;
  for (size_t i = 0; i < TA_SLICES; i++) s->pages[i].head_off = (uint16_t)i;
  s->pages[0].kind = TA_SPAN_HUGE;
  s->pages[0].slices = 1;
  s->pages[0].start = (uint8_t *)p + off;
  ta_segmap_set(s, true);
  huge_account(s, 1);
  ta_relaxed_add(&ta_huge_total, 1);
  return (uint8_t *)p + off;
}

void ta_huge_free(ta_segment_t *s) {
  huge_account(s, -1);
  ta_segmap_set(s, false);
  ta_prim_unmap(s, s->map_size);
}

void *ta_huge_realloc(ta_segment_t *s, size_t size) {
  size_t off = s->huge_off, ps = ta_prim_page_size();
  if (size > PTRDIFF_MAX - off - ps - TA_SEGMENT_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map = round_up(off + size, ps);
  if (map == s->map_size) return (uint8_t *)s + off;
  huge_account(s, -1);
  ta_segmap_set(s, false);
  void *q;
  if (ta_prim_remap(s, s->map_size, map, TA_SEGMENT_SIZE, &q) != 0) {
    ta_segmap_set(s, true);
    huge_account(s, 1);
    errno = ENOMEM;
    return NULL; /* the block stays as it was */
  }
  s = q;
  s->map_size = map;
  s->huge_size = map - off;
  s->pages[0].start = (uint8_t *)q + off;
  ta_segmap_set(s, true);
  huge_account(s, 1);
  return (uint8_t *)q + off;
}
