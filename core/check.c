/* The invariant checker: every structure's _is_valid, for tests and
 * debugging (it walks everything; not for production paths). */
#include "internal.h"

TRIMALLOC_API int trimalloc_check(void) {
  ta_process_init();
  if (!ta_tcache_is_valid(ta_tls_tcache)) return 0;
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++)
    if (!ta_arena_is_valid(&ta_arenas[i])) return 0;
  return 1;
}
