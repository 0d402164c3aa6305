/* What the core/bind/ files share beyond binding.h. */
#ifndef TRIMALLOC_BIND_INTERNAL_H
#define TRIMALLOC_BIND_INTERNAL_H

#include "binding.h"

/* bind_backend.c: CLOCK_MONOTONIC in ns (the real clock, no test offset). */
uint64_t ta_bind_mono_ns(void);

#endif
