/* The arenas' and bins' locks when taken: a short spin, then a futex wait
 * (the uncontended paths are inline: internal.h, ta_binlock_lock). The
 * state word: 0 free, 1 held, 2 held and maybe waited for; a waiter sets 2
 * before it sleeps, so the holder's release wakes one (Drepper, "Futexes Are
 * Tricky", mutex 3). */
#include "internal.h"

/* Holders do O(1) work or one batch (a refill or a flush of up to 64
 * blocks: a few microseconds): a waiter on another CPU usually gets the
 * lock within this many looks, and a sleep and a wake-up cost more. */
#define SPINS 100

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

void ta_binlock_wait(ta_binlock_t *l) {
  for (int i = 0; i < SPINS; i++) {
    uint32_t c = ta_relaxed_load(&l->state);
    if (c == 0 && atomic_compare_exchange_weak_explicit(&l->state, &c, 1, memory_order_acquire, memory_order_relaxed))
      return;
    cpu_relax();
  }
  while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0) ta_prim_futex_wait(&l->state, 2);
}

void ta_binlock_wake(ta_binlock_t *l) {
  ta_prim_futex_wake(&l->state);
}
