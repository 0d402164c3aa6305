/* The bindings' table of frame keys (core/bind/bind_frames.c's
 * ta_bind_keys_t: the Ruby and Python walkers keep there every key they hand
 * the heap profiler, inside malloc, so it lives in a mapping of its own):
 *  - every key added is found, once (HELD on the second add), in order;
 *  - a full table refuses new keys and still finds the old ones;
 *  - it is resident only as far as it is used: a few hundred keys in a table
 *    made for Ruby's 2^18 touch one page of slots, not one page a key (the
 *    slots were used at full size from the start: 300 keys left ~230 of its
 *    512 pages resident, 0.9 MiB, in a process where sampling took a few
 *    hundred samples). Pages counted with mincore; that test is skipped under
 *    an emulator. */
#include "check.h"
#include "../../core/bind/binding.h"

/* Bytes of [p, p + size) resident (check.h's page_resident per page). */
static size_t resident(const void *p, size_t size) {
  size_t ps = page_size(), r = 0;
  for (size_t off = 0; off < size; off += ps) r += page_resident((const char *)p + off) == 1 ? ps : 0;
  return r;
}

static uint64_t key_of(size_t i) { /* addresses of Ruby VALUEs / code objects: 8-aligned, clustered */
  return 0x7f3a10000000ull + (uint64_t)i * 40;
}

static size_t slots_for(size_t max) { /* what ta_bind_keys_init maps: at most half full */
  size_t s = 2;
  while (s < 2 * max) s *= 2;
  return s;
}

static void test_keys(void) {
  ta_bind_keys_t k;
  CHECK(ta_bind_keys_init(&k, (size_t)1 << 18) == 0, "init: %s", strerror(errno));
  size_t ps = page_size(), slot_bytes = slots_for(k.max) * sizeof *k.slots;
  long bad = 0;
  for (size_t i = 0; i < 300; i++) bad += ta_bind_keys_add(&k, key_of(i)) != TA_BIND_KEY_ADDED;
  for (size_t i = 0; i < 300; i++) bad += ta_bind_keys_add(&k, key_of(i)) != TA_BIND_KEY_HELD;
  for (size_t i = 0; i < 300; i++) bad += k.keys[i] != key_of(i);
  CHECK(bad == 0 && k.n == 300, "300 keys: %ld wrong, n %zu", bad, k.n);
  CHECK(!ta_bind_keys_has(&k, key_of(300)), "a key never added is found");
  size_t r = resident(k.slots, slot_bytes);
  CHECK(r <= 2 * ps, "300 keys: %zu KiB of the slots resident (of %zu KiB mapped; one page expected)", r >> 10,
        slot_bytes >> 10);
  /* past several doublings: all still found, the slots resident about 8 bytes a key */
  for (size_t i = 300; i < 100000; i++) bad += ta_bind_keys_add(&k, key_of(i)) != TA_BIND_KEY_ADDED;
  for (size_t i = 0; i < 100000; i++) bad += !ta_bind_keys_has(&k, key_of(i));
  CHECK(bad == 0, "100,000 keys: %ld not added or not found", bad);
  r = resident(k.slots, slot_bytes);
  CHECK(r <= (size_t)262144 * sizeof *k.slots + ps, "100,000 keys: %zu KiB of the slots resident", r >> 10);
  munmap(k.keys, k.max * sizeof *k.keys);
  munmap(k.slots, slot_bytes);
}

static void test_full(void) {
  ta_bind_keys_t k;
  CHECK(ta_bind_keys_init(&k, 3000) == 0, "init: %s", strerror(errno));
  long bad = 0;
  for (size_t i = 0; i < 3000; i++) bad += ta_bind_keys_add(&k, key_of(i)) != TA_BIND_KEY_ADDED;
  CHECK(bad == 0, "%ld of 3000 keys not added", bad);
  CHECK(ta_bind_keys_add(&k, key_of(3000)) == TA_BIND_KEY_FULL, "a key past max is added");
  CHECK(ta_bind_keys_add(&k, key_of(7)) == TA_BIND_KEY_HELD, "a key held is refused when full");
  for (size_t i = 0; i < 3000; i++) bad += !ta_bind_keys_has(&k, key_of(i));
  CHECK(bad == 0 && !ta_bind_keys_has(&k, key_of(3000)), "full table: %ld keys lost", bad);
  CHECK(k.mask + 1 == slots_for(3000), "full table: %zu slots in use of %zu", k.mask + 1, slots_for(3000));
  munmap(k.keys, k.max * sizeof *k.keys);
  munmap(k.slots, slots_for(3000) * sizeof *k.slots);
}

int main(void) {
  RUN(test_full);
  if (test_runner()) SKIP(test_keys, "under an emulator (mincore sees its pages)");
  else RUN(test_keys);
  return check_summary();
}
