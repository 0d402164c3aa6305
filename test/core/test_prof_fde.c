/* The heap profiler's FDE lookup (core/prof_fde.c: the _Unwind_Find_FDE
 * that libtrimalloc.so's unwinder calls), against libgcc_s's own, for
 * functions of a library dlopen'ed here (zlib), whose unwind tables nothing
 * in this process has read:
 *  - the same function start and the same CFA program for each PC, and no
 *    FDE where libgcc_s finds none;
 *  - the tables read from the library's file: no page of the segment that
 *    holds them enters the process (/proc/self/pagemap), where libgcc_s's
 *    lookup of the same PCs brings them in (which shows the check can fail:
 *    it is the lookup the profiler made before);
 *  - threads looking up at once.
 * Skipped on musl (frame pointers there: no libgcc unwinder), under an
 * emulator (its /proc/self/pagemap is the emulator's) and without libz. */
#include "check.h"
#include "../../core/internal.h"

#if TA_PROF_FDE_FILES
#include <dlfcn.h>
#include <link.h>

struct dwarf_eh_bases {
  void *tbase, *dbase, *func;
};
const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases); /* the core's (hidden) */
typedef const void *(*find_fde_fn)(void *pc, struct dwarf_eh_bases *bases);

static uintptr_t seg_lo, seg_hi; /* the segment holding libz's .eh_frame_hdr */

static int find_seg(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  (void)arg;
  if (!info->dlpi_name || !strstr(info->dlpi_name, "libz.so")) return 0;
  uintptr_t hdr = 0;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_GNU_EH_FRAME) hdr = info->dlpi_phdr[i].p_vaddr;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *p = &info->dlpi_phdr[i];
    if (p->p_type == PT_LOAD && hdr >= p->p_vaddr && hdr < p->p_vaddr + p->p_memsz) {
      seg_lo = (info->dlpi_addr + p->p_vaddr) & ~(uintptr_t)4095;
      seg_hi = (info->dlpi_addr + p->p_vaddr + p->p_memsz + 4095) & ~(uintptr_t)4095;
    }
  }
  return 1;
}

/* Pages of [seg_lo, seg_hi) present in this process's page tables. */
static int present(void) {
  int fd = open("/proc/self/pagemap", O_RDONLY), n = 0;
  if (fd < 0) return -1;
  for (uintptr_t a = seg_lo; a < seg_hi; a += 4096) {
    uint64_t e = 0;
    if (pread(fd, &e, 8, (off_t)(a / 4096 * 8)) != 8) n = -1000000;
    n += (int)(e >> 63);
  }
  close(fd);
  return n;
}

static uint32_t u32(const void *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

static const char *names[] = {"inflate", "deflate", "crc32", "adler32", "compress2", "uncompress", "inflateInit_",
                              "deflateInit2_", "gzopen", "gzread", "gzwrite", "gzclose", "inflateEnd", "deflateEnd"};
enum { N = sizeof names / sizeof *names };

/* Threads looking up new PCs at once (misses, the table growing): the
 * function libgcc_s finds (TSan). */
static void *z_lib;
static find_fde_fn libgcc;
static void *lookups(void *arg) {
  long bad = 0;
  for (int i = 0; i < N * 40; i++) {
    char *f = dlsym(z_lib, names[i / 40]);
    struct dwarf_eh_bases a = {0}, b = {0};
    if (f && !_Unwind_Find_FDE(f + 4 + 7 * (i % 40), &a) != !libgcc(f + 4 + 7 * (i % 40), &b)) bad++;
    else if (a.func != b.func) bad++;
  }
  (void)arg;
  return (void *)bad;
}

static void test_file_not_mapping(void) {
  void *z = z_lib;
  libgcc = (find_fde_fn)dlsym(RTLD_DEFAULT, "_Unwind_Find_FDE");
  if (!CHECK(libgcc, "libgcc_s's _Unwind_Find_FDE")) return;
  dl_iterate_phdr(find_seg, NULL);
  if (!CHECK(seg_hi > seg_lo, "libz's PT_GNU_EH_FRAME segment")) return;
  CHECK(present() == 0, "%d pages of libz's unwind-table segment present before any lookup", present());

  const uint8_t *ours[N];
  uint64_t reads = ta_relaxed_load(&ta_prof_fde_reads);
  int found = 0;
  for (int i = 0; i < N; i++) {
    struct dwarf_eh_bases b = {0};
    char *f = dlsym(z, names[i]);
    ours[i] = f ? _Unwind_Find_FDE(f + 1, &b) : NULL;
    found += ours[i] != NULL;
    CHECK(!f || !ours[i] || b.func == f, "%s: the FDE's function %p", names[i], b.func);
  }
  CHECK(found >= 8, "FDEs found: %d of %d", found, N);
  CHECK(ta_relaxed_load(&ta_prof_fde_reads) > reads, "read from the file: %llu preads",
        (unsigned long long)(ta_relaxed_load(&ta_prof_fde_reads) - reads));
  int after = present();
  CHECK(after == 0, "%d pages of libz's unwind-table segment present after the core's lookups", after);
  /* the second lookup of a PC: the same copy, no read */
  reads = ta_relaxed_load(&ta_prof_fde_reads);
  struct dwarf_eh_bases b2 = {0};
  char *f0 = dlsym(z, names[0]);
  CHECK(_Unwind_Find_FDE(f0 + 1, &b2) == ours[0] && ta_relaxed_load(&ta_prof_fde_reads) == reads,
        "a second lookup reads again");

  /* libgcc_s: the same function and the same CFA program (the copy's is the
   * tail of its FDE, after pc_begin, pc_range and an empty augmentation),
   * for 40 PCs in and after each function (560 PCs: the table grows) */
  int differ = 0, n = 0;
  for (int i = 0; i < N; i++) {
    char *f = dlsym(z, names[i]);
    for (int j = 0; f && j < 40; j++, n++) {
      struct dwarf_eh_bases a = {0}, b = {0};
      const uint8_t *mine = _Unwind_Find_FDE(f + 1 + 7 * j, &a), *theirs = libgcc(f + 1 + 7 * j, &b);
      if (!theirs != !mine) {
        differ++;
        continue;
      }
      if (!theirs) continue;
      size_t prog = u32(mine) - (4 + 2 * 4 + 1), their_len = u32(theirs);
      if (b.func != a.func || prog > their_len || memcmp(mine + 4 + u32(mine) - prog, theirs + 4 + their_len - prog, prog))
        differ++;
    }
  }
  CHECK(differ == 0, "%d of %d lookups differ from libgcc_s's", differ, n);
  pthread_t th[4];
  long bad = 0;
  for (int t = 0; t < 4; t++) pthread_create(&th[t], NULL, lookups, NULL);
  for (int t = 0; t < 4; t++) {
    void *r;
    pthread_join(th[t], &r);
    bad += (long)r;
  }
  CHECK(bad == 0, "%ld lookups from 4 threads differ from libgcc_s's", bad);
  CHECK(present() > 0, "libgcc_s's lookups brought no page in: the check above cannot fail");
}

int main(void) {
  const char *runner = getenv("TEST_RUNNER");
  void *z = dlopen("libz.so.1", RTLD_NOW | RTLD_LOCAL);
  if (runner && runner[0]) SKIP(test_file_not_mapping, "under an emulator");
  else if (!z) SKIP(test_file_not_mapping, "no libz.so.1");
  else {
    z_lib = z;
    RUN(test_file_not_mapping);
  }
  return check_summary();
}
#else
int main(void) {
  SKIP(test_file_not_mapping, "no lookup of its own in this build (musl: frame pointers; glibc before 2.35)");
  return check_summary();
}
#endif
