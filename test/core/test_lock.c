/* The arenas' and bins' locks (ta_binlock_t, core/lock.c; internal.h inline):
 *  - 4 threads add 1 to a plain counter 200,000 times each under one lock,
 *    each noting that it is inside: no thread finds another inside, the sum
 *    is exact (a lost update means two holders at once), and the lock ends
 *    free.
 *  - 4 threads that each hold the lock for 2 ms, 50 times: the others
 *    outlast their spin and sleep on the futex (state 2), so every release
 *    must wake one. A waiter never woken hangs: the alarm reports it. */
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "check.h"
#include "../../core/internal.h"

enum { THREADS = 4, ADDS = 200000, HOLDS = 50 };
static ta_binlock_t lock;
static uint64_t counter; /* plain: only the lock orders it */
static _Atomic int inside, overlaps;

static void *adder(void *arg) {
  (void)arg;
  for (int i = 0; i < ADDS; i++) {
    ta_lock(&lock);
    if (atomic_exchange_explicit(&inside, 1, memory_order_relaxed)) atomic_fetch_add(&overlaps, 1);
    counter++;
    atomic_store_explicit(&inside, 0, memory_order_relaxed);
    ta_unlock(&lock);
  }
  return NULL;
}

static void *holder(void *arg) {
  (void)arg;
  for (int i = 0; i < HOLDS; i++) {
    ta_lock(&lock);
    counter++;
    usleep(2000);
    ta_unlock(&lock);
  }
  return NULL;
}

static void on_alarm(int sig) {
  (void)sig;
  static const char m[] = "FAIL test_lock.c: a thread waiting for the lock was never woken (30 s)\n";
  if (write(2, m, sizeof m - 1) < 0) _exit(2);
  _exit(1);
}

static void run_threads(void *(*fn)(void *)) {
  pthread_t t[THREADS];
  counter = 0;
  ta_binlock_init(&lock);
  for (int i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, fn, NULL);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
}

static void test_one_holder_at_a_time(void) {
  run_threads(adder);
  CHECK(atomic_load(&overlaps) == 0, "%d times a thread found another holding the lock", atomic_load(&overlaps));
  CHECK(counter == (uint64_t)THREADS * ADDS, "%llu additions of %llu: two holders at once",
        (unsigned long long)counter, (unsigned long long)THREADS * ADDS);
  CHECK(atomic_load(&lock.state) == 0, "the lock is not free at the end: state %u", atomic_load(&lock.state));
}

static void test_sleeping_waiters_are_woken(void) {
  run_threads(holder);
  CHECK(counter == (uint64_t)THREADS * HOLDS, "%llu holds of %d", (unsigned long long)counter, THREADS * HOLDS);
  CHECK(atomic_load(&lock.state) == 0, "the lock is not free at the end: state %u", atomic_load(&lock.state));
}

int main(void) {
  signal(SIGALRM, on_alarm); /* a waiter never woken: reported, not a runner's timeout */
  alarm(30);
  RUN(test_one_holder_at_a_time);
  RUN(test_sleeping_waiters_are_woken);
  return check_summary();
}
