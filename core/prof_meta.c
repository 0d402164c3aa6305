/* The heap profiler's own memory: mappings from the OS, never the program's
 * heap, within the prof_max_bytes budget (what would go over it is refused:
 * the caller counts a dropped sample, an allocation never fails for it).
 * Bytes that stay (interned stacks, names) are cut from chunks; tables that
 * grow (the live set's hash, the sample records' pages) are mappings of their
 * own. Also the two bits of libm the sampler needs (no libm dependency). */
#include "internal.h"

_Atomic uint64_t ta_prof_meta_bytes;
static ta_lock_t meta_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *chunk; /* under meta_lock */
static size_t chunk_left;
#define TA_PROF_CHUNK ((size_t)256 << 10)

static bool charge(size_t size) { /* meta_lock held, or any thread: a relaxed check is enough */
  uint64_t limit = (uint64_t)ta_opt(TA_OPT_PROF_MAX_BYTES);
  if (ta_relaxed_load(&ta_prof_meta_bytes) + size > limit) return false;
  ta_relaxed_add(&ta_prof_meta_bytes, size);
  ta_relaxed_add(&ta_meta_bytes, size);
  return true;
}

/* Mappings are whole OS pages (4 to 64 KiB): sizes are rounded up here. */
static size_t pages(size_t size) {
  size_t ps = ta_prim_page_size();
  return (size + ps - 1) & ~(ps - 1);
}

void *ta_prof_meta_map(size_t size) {
  size = pages(size);
  if (!charge(size)) return NULL;
  void *p;
  if (ta_prim_map(size, ta_prim_page_size(), &p) != 0) {
    ta_relaxed_sub(&ta_prof_meta_bytes, size);
    ta_relaxed_sub(&ta_meta_bytes, size);
    return NULL;
  }
  return p;
}

void ta_prof_meta_unmap(void *p, size_t size) {
  if (!p) return;
  size = pages(size);
  ta_prim_unmap(p, size);
  ta_relaxed_sub(&ta_prof_meta_bytes, size);
  ta_relaxed_sub(&ta_meta_bytes, size);
}

void *ta_prof_meta_alloc(size_t size) {
  size = (size + 15) & ~(size_t)15;
  if (size > TA_PROF_CHUNK) return NULL; /* a trace is at most 128 frames: far less */
  ta_lock(&meta_lock);
  if (chunk_left < size) {
    uint8_t *c = ta_prof_meta_map(TA_PROF_CHUNK);
    if (!c) {
      ta_unlock(&meta_lock);
      return NULL;
    }
    chunk = c; /* the old chunk's tail is left unused */
    chunk_left = TA_PROF_CHUNK;
  }
  void *p = chunk;
  chunk += size;
  chunk_left -= size;
  ta_unlock(&meta_lock);
  return p;
}

void ta_prof_meta_fork_prepare(void) {
  ta_lock(&meta_lock);
}
void ta_prof_meta_fork_parent(void) {
  ta_unlock(&meta_lock);
}

/* ln x = e ln 2 + ln m, m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(s),
 * s = (m - 1) / (m + 1), |s| < 0.172: the series to s^21 is exact to
 * double precision. */
double ta_prof_log(double x) {
  union {
    double d;
    uint64_t u;
  } v = {x};
  int e = (int)((v.u >> 52) & 0x7ff) - 1023;
  v.u = (v.u & 0x000fffffffffffffull) | 0x3ff0000000000000ull; /* m in [1, 2) */
  double m = v.d;
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e++;
  }
  double s = (m - 1) / (m + 1), s2 = s * s, t = s, sum = 0;
  for (int k = 1; k <= 21; k += 2, t *= s2) sum += t / k;
  return e * 0.6931471805599453 + 2 * sum;
}

/* e^x, x <= 0: e^x = 2^k e^r, |r| <= ln2 / 2, Taylor to r^14. */
double ta_prof_exp(double x) {
  if (x < -700) return 0;
  double kf = x / 0.6931471805599453;
  long k = (long)(kf < 0 ? kf - 0.5 : kf + 0.5);
  double r = x - (double)k * 0.6931471805599453, term = 1, sum = 1;
  for (int i = 1; i <= 14; i++) {
    term *= r / i;
    sum += term;
  }
  union {
    double d;
    uint64_t u;
  } v = {sum};
  v.u += (uint64_t)(int64_t)k << 52;
  return v.d;
}
