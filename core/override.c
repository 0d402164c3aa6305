/* The standard names, as aliases of the trimalloc_* functions, so that
 * dlsym(RTLD_DEFAULT, "malloc") == trimalloc_malloc and no call pays for a
 * wrapper. An alias must be defined in the unit that defines its target, so
 * this unit includes the three files that define the API; the preload library
 * is built from it instead of them (the static library for tests keeps the
 * system's names). */
#include "alloc.c"
#include "align.c"
#include "trim.c"

#include <malloc.h>
#include <stdlib.h>

#define TA_ALIAS(fn) __attribute__((alias(#fn), visibility("default")))

void *malloc(size_t n) TA_ALIAS(trimalloc_malloc);
void *calloc(size_t c, size_t n) TA_ALIAS(trimalloc_calloc);
void *realloc(void *p, size_t n) TA_ALIAS(trimalloc_realloc);
void *reallocarray(void *p, size_t c, size_t n) TA_ALIAS(trimalloc_reallocarray);
void free(void *p) TA_ALIAS(trimalloc_free);
int posix_memalign(void **out, size_t a, size_t n) TA_ALIAS(trimalloc_posix_memalign);
void *aligned_alloc(size_t a, size_t n) TA_ALIAS(trimalloc_aligned_alloc);
void *memalign(size_t a, size_t n) TA_ALIAS(trimalloc_memalign);
void *valloc(size_t n) TA_ALIAS(trimalloc_valloc);
void *pvalloc(size_t n) TA_ALIAS(trimalloc_pvalloc);
int malloc_trim(size_t pad) TA_ALIAS(trimalloc_malloc_trim);

/* glibc declares the argument without const. */
TRIMALLOC_API size_t malloc_usable_size(void *p) {
  return trimalloc_malloc_usable_size(p);
}

/* glibc's internal names, which some programs and libraries call directly. */
void *__libc_malloc(size_t n) TA_ALIAS(trimalloc_malloc);
void *__libc_calloc(size_t c, size_t n) TA_ALIAS(trimalloc_calloc);
void *__libc_realloc(void *p, size_t n) TA_ALIAS(trimalloc_realloc);
void __libc_free(void *p) TA_ALIAS(trimalloc_free);
void *__libc_memalign(size_t a, size_t n) TA_ALIAS(trimalloc_memalign);
void *__libc_valloc(size_t n) TA_ALIAS(trimalloc_valloc);
void *__libc_pvalloc(size_t n) TA_ALIAS(trimalloc_pvalloc);
int __posix_memalign(void **out, size_t a, size_t n) TA_ALIAS(trimalloc_posix_memalign);
