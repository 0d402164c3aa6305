/* Frees that name the block's size: C23's free_sized, and C++'s sized
 * operator delete and delete[] (what `delete p` calls for a complete type,
 * and `delete[] a` for elements with a destructor, with sized deallocation:
 * the default of GCC and Clang since C++14). The size must be the one the
 * block was allocated with (or, in C, last realloc'ed to); one that malloc
 * could not have answered with this block is a delete through the wrong
 * type, or of an array as a single object: reported and aborted, as a
 * double free is. Nothing of this is on malloc's or free's path. */
#include "internal.h"

/* Could malloc(n), or a realloc to n that kept the block in place (it does
 * for n in [have / 2, have]), have left p as it is? */
static bool size_fits(void *p, size_t n) {
  size_t have = ta_usable_size(p, "free_sized: invalid pointer");
  if (n > have) return false;
  if (n >= have / 2) return true; /* realloc keeps a block that shrinks by up to half */
  ta_segment_t *s = ta_segment_of(p);
  if (!ta_segmap_contains(s)) return true; /* aligned above 2 MiB: not malloc's */
  ta_span_t *sp = ta_span_of(s, p);
  switch (sp->kind) {
  case TA_SPAN_SLAB:
    return n <= TA_TCACHE_MAX - TA_CANARY && ta_class_of(n + TA_CANARY) == sp->cls;
  case TA_SPAN_LARGE: /* whole slices */
    return n + TA_SLICE_SIZE > have;
  default: /* huge: whole pages */
    return n + ta_prim_page_size() > have;
  }
}

TRIMALLOC_API void trimalloc_free_sized(void *p, size_t n) {
  if (p && !size_fits(p, n)) ta_error("free_sized: the size is not the block's (sized delete of the wrong type?)", p);
  trimalloc_free(p);
}

TA_ALIAS(free_sized, trimalloc_free_sized)
/* operator delete(void *, std::size_t) and operator delete[](void *,
 * std::size_t), by their mangled names: a preloaded library replaces them
 * as it replaces malloc (the other operators stay libstdc++'s, which call
 * malloc and free). */
TA_ALIAS(_ZdlPvm, trimalloc_free_sized)
TA_ALIAS(_ZdaPvm, trimalloc_free_sized)
