/* Aligned allocation. Blocks are placed, not shifted: a small block comes
 * from the first size class that is a multiple of the alignment (pages start
 * on 64 KiB boundaries, so every block of such a class is aligned), a large one
 * from a slice-aligned run, a huge one at an aligned offset of its mapping
 * (alignments above 2 MiB: at a segment boundary, huge.c).
 * So every pointer handed out is a block start and free needs no special case. */
#include "internal.h"

#include <errno.h>

static bool is_pow2(size_t a) {
  return a != 0 && (a & (a - 1)) == 0;
}

/* Large and huge blocks get the profiler's draw here; a size class's in
 * ta_malloc_class. */
static void *big(void *p) {
#ifndef TA_NO_PROF
  if (p && ta_unlikely(ta_relaxed_load(&ta_prof_rate)))
    ta_prof_draw(p, ta_usable_size(p, "aligned allocation"));
#endif
  return p;
}

TA_PROF_PATH static void *aligned(size_t align, size_t n) {
  if (align <= TA_ALIGN) return trimalloc_malloc(n);
  if (n > PTRDIFF_MAX) {
    errno = ENOMEM;
    return NULL;
  }
  if (align > TA_MAX_ALIGN) return big(ta_huge_alloc_far(n, align, false));
  size_t need = n < align ? align : n;
  /* Hardened: a slab block needs the canary's room; a request within 8
   * bytes of the largest class goes to the page heap, as in malloc. */
  bool slab = need <= TA_MEDIUM_MAX - TA_CANARY;
  if (slab) need += TA_CANARY;
  if (need <= TA_LARGE_MAX && align <= TA_SLICE_SIZE) {
    ta_process_init();
    if (slab)
      for (size_t c = ta_class_of(need); c < TA_CLASSES; c++)
        if (ta_class_size(c) % align == 0) return ta_malloc_class(c);
    return big(ta_large_alloc(ta_arena_pick(), need));
  }
  return big(ta_huge_alloc(n, align, false));
}

TA_PROF_PATH_FP TRIMALLOC_API int trimalloc_posix_memalign(void **out, size_t align, size_t n) {
  if (!is_pow2(align) || align % sizeof(void *) != 0) return EINVAL;
  int saved = errno;
  void *p = aligned(align, n);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_aligned_alloc(size_t align, size_t n) {
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return aligned(align, n);
}

/* glibc rounds an alignment that is not a power of two up to one. */
TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_memalign(size_t align, size_t n) {
  if (align > ((size_t)1 << (sizeof(size_t) * 8 - 1))) {
    errno = EINVAL;
    return NULL;
  }
  while (!is_pow2(align)) align = align ? (align | (align - 1)) + 1 : 1;
  return aligned(align, n);
}

TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_valloc(size_t n) {
  return aligned(ta_prim_page_size(), n);
}

TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_pvalloc(size_t n) {
  size_t ps = ta_prim_page_size();
  if (n > PTRDIFF_MAX - ps) {
    errno = ENOMEM;
    return NULL;
  }
  n = n == 0 ? ps : (n + ps - 1) & ~(ps - 1);
  return aligned(ps, n);
}

TA_ALIAS(posix_memalign, trimalloc_posix_memalign)
TA_ALIAS(aligned_alloc, trimalloc_aligned_alloc)
TA_ALIAS(memalign, trimalloc_memalign)
TA_ALIAS(valloc, trimalloc_valloc)
TA_ALIAS(pvalloc, trimalloc_pvalloc)
TA_ALIAS(__libc_memalign, trimalloc_memalign)
TA_ALIAS(__libc_valloc, trimalloc_valloc)
TA_ALIAS(__libc_pvalloc, trimalloc_pvalloc)
TA_ALIAS(__posix_memalign, trimalloc_posix_memalign)
