/* The heap profiler's own memory with few samples: its hash tables (the
 * live set's slots, the traces', the frame names') are mapped at a page and
 * doubled at half full, not mapped at a size that an entry anywhere in it
 * makes resident all the same (they were 32, 16 and 24 KiB from the first
 * sample and the first name: all 72 KiB resident at the exit of a Ruby run
 * at 512 KiB with 9-11 live samples, 56-64 traces and 40 names). Counted
 * with the core's prof_meta_bytes (what the profiler maps), in a process of
 * its own: the first samples, then 40 traces (tags), then 40 frame names,
 * each step's growth bounded. The other mappings (the 256 KiB chunk cut for
 * traces and names, the first page of 4096 records, the peak set) are
 * touched in order as they are used; each is mapped by the first sample. */
#include "check.h"
#include "../../core/internal.h"

#define KIB(x) ((unsigned long)((x) >> 10))

static void *volatile sink[56];

static uint64_t pages(uint64_t bytes) { /* the profiler maps whole pages */
  return (bytes + page_size() - 1) / page_size() * page_size();
}

static uint64_t meta(void) {
  return atomic_load(&ta_prof_meta_bytes);
}

static void test_few_samples(void) {
  CHECK(meta() == 0, "%lu KiB of profiler metadata before sampling started", KIB(meta()));
  CHECK(trimalloc_prof_start(1) == 0, "start");
  /* interval 1: every allocation once the thread's countdown has seen the start */
  for (int i = 0; i < 100000 && atomic_load(&ta_prof_samples) < 16; i++) {
    sink[0] = trimalloc_malloc(100);
    trimalloc_free(sink[0]);
  }
  for (int i = 0; i < 16; i++) sink[i] = trimalloc_malloc(100);
  CHECK(atomic_load(&ta_prof_samples) >= 32, "%lu samples", (unsigned long)atomic_load(&ta_prof_samples));
  uint64_t first = meta();
  for (int i = 0; i < 40; i++) { /* 40 traces: the same stack, 40 tags */
    char tag[16];
    snprintf(tag, sizeof tag, "t%d", i);
    trimalloc_prof_set_tag(tag);
    sink[16 + i] = trimalloc_malloc(100);
  }
  trimalloc_prof_set_tag(NULL);
  uint64_t traces = meta() - first;
  for (int i = 0; i < 40; i++) CHECK(trimalloc_prof_name_frame(0x1000 + 16 * (uint64_t)i, "Foo#bar", "foo.rb") == 0);
  uint64_t names = meta() - first - traces;
  trimalloc_prof_stop();
  for (int i = 0; i < 56; i++) trimalloc_free(sink[i]);
  size_t ps = page_size();
  /* the first samples: the chunk (256 KiB), a page of records (128 KiB), the
   * peak set (24 KiB), the FDE lookup's two tables (8 KiB each, glibc; when
   * it runs), the unwind rules' table (a page, x86-64 glibc), and the live
   * set's and the traces' tables: a page each */
  uint64_t fixed = pages(256 << 10) + pages(128 << 10) + pages(24 << 10) + 2 * pages(8 << 10) + (TA_PROF_CFA ? ps : 0);
  CHECK(first <= fixed + 2 * ps, "16 samples, 1 trace: %lu KiB mapped (%lu KiB of tables: 2 pages expected)",
        KIB(first), KIB(first > fixed ? first - fixed : 0));
  CHECK(traces <= ps, "40 traces and tags: %lu KiB more (the tags' table: a page)", KIB(traces));
  CHECK(names <= ps, "40 frame names: %lu KiB more (a page expected)", KIB(names));
  printf("   metadata: %lu KiB after 16 samples, +%lu KiB for 40 traces, +%lu KiB for 40 names\n", KIB(first),
         KIB(traces), KIB(names));
}

int main(void) {
  RUN(test_few_samples);
  return check_summary();
}
