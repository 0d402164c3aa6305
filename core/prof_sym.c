/* The dynamic symbol holding an address, with its start and size, read from
 * the ELF tables of the object that maps it: the profiler's names for native
 * frames (prof_dump.c) and the extent of the interpreter's eval function
 * (prof_stack.c). glibc's dladdr1(RTLD_DL_SYMENT) gives the size too, but
 * musl has no dladdr1 (and its dladdr no size): one lookup for both libcs,
 * so that the code musl runs is the code every build tests.
 *
 * It allocates nothing and takes no lock but dl_iterate_phdr's: glibc holds
 * its loader lock for the whole iteration, so the object's tables are read
 * while no dlclose can unmap them (the name is copied out before it
 * returns); musl's takes its lock only between objects, and musl never
 * unmaps an object. Callers hold no allocator lock (a dump runs outside all
 * of them; setting the frames hook is an API call outside malloc). */
#include "internal.h"

#include <link.h>

typedef struct {
  uintptr_t pc;
  ta_prof_sym_t *out;
  char *name;
  size_t name_size;
  bool found;
} lookup_t;

/* A loaded segment of the object holds [vaddr, vaddr + n). */
static bool in_object(const struct dl_phdr_info *info, uintptr_t vaddr, size_t n) {
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_LOAD && vaddr >= ph->p_vaddr && vaddr - ph->p_vaddr <= ph->p_memsz &&
        n <= ph->p_memsz - (vaddr - ph->p_vaddr))
      return true;
  }
  return false;
}

/* A d_ptr of the object's dynamic section as an address: glibc relocates
 * them in place (but not a read-only section's, the vDSO's), musl never
 * does. The value that lands inside the object is the one meant (with a
 * load address of 0, both are the same). 0: neither. */
static uintptr_t dyn_ptr(const struct dl_phdr_info *info, uintptr_t v, size_t n) {
  if (in_object(info, v - info->dlpi_addr, n)) return v;
  if (in_object(info, v, n)) return info->dlpi_addr + v;
  return 0;
}

/* The number of symbols from DT_GNU_HASH: one past the last chain's end in
 * the highest bucket (symbols below symoffset are not hashed: undefined). */
static size_t gnu_hash_count(const struct dl_phdr_info *info, const uint32_t *h) {
  uint32_t nbuckets = h[0], symoffset = h[1], bloom = h[2];
  const uint32_t *buckets = (const uint32_t *)((const ElfW(Addr) *)(h + 4) + bloom);
  const uint32_t *chain = buckets + nbuckets;
  uint32_t last = 0;
  if (!in_object(info, (uintptr_t)buckets - info->dlpi_addr, (size_t)nbuckets * 4)) return 0;
  for (uint32_t i = 0; i < nbuckets; i++)
    if (buckets[i] > last) last = buckets[i];
  if (last < symoffset) return symoffset;
  while (in_object(info, (uintptr_t)&chain[last - symoffset] - info->dlpi_addr, 4) && !(chain[last - symoffset] & 1))
    last++;
  return (size_t)last + 1;
}

/* Code and data symbols, as dladdr takes them (not TLS offsets, absolute
 * values or undefined ones). */
static bool wanted(const ElfW(Sym) *s) {
  int type = s->st_info & 0xf; /* ELF32_ST_TYPE and ELF64_ST_TYPE alike */
  return (type == STT_FUNC || type == STT_GNU_IFUNC || type == STT_OBJECT || type == STT_NOTYPE) &&
         s->st_shndx != SHN_UNDEF && s->st_shndx != SHN_ABS;
}

static int find(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  lookup_t *l = arg;
  uintptr_t off = l->pc - info->dlpi_addr;
  if (!in_object(info, off, 1)) return 0;
  const ElfW(Dyn) *dyn = NULL;
  for (int i = 0; i < info->dlpi_phnum; i++)
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
  if (!dyn) return 1; /* a static program: no dynamic symbols */
  uintptr_t symtab = 0, strtab = 0, hash = 0, gnu_hash = 0, strsz = 0, syment = sizeof(ElfW(Sym));
  for (; dyn->d_tag != DT_NULL; dyn++) switch (dyn->d_tag) {
      case DT_SYMTAB: symtab = dyn->d_un.d_ptr; break;
      case DT_STRTAB: strtab = dyn->d_un.d_ptr; break;
      case DT_STRSZ: strsz = dyn->d_un.d_val; break;
      case DT_SYMENT: syment = dyn->d_un.d_val; break;
      case DT_HASH: hash = dyn->d_un.d_ptr; break;
      case DT_GNU_HASH: gnu_hash = dyn->d_un.d_ptr; break;
    }
  symtab = symtab ? dyn_ptr(info, symtab, sizeof(ElfW(Sym))) : 0;
  strtab = strtab ? dyn_ptr(info, strtab, strsz) : 0;
  hash = hash ? dyn_ptr(info, hash, 8) : 0;
  gnu_hash = gnu_hash ? dyn_ptr(info, gnu_hash, 16) : 0;
  if (!symtab || !strtab || syment < sizeof(ElfW(Sym))) return 1;
  size_t n = hash ? ((const uint32_t *)hash)[1] : gnu_hash ? gnu_hash_count(info, (const uint32_t *)gnu_hash) : 0;
  if (!in_object(info, symtab - info->dlpi_addr, n * syment)) return 1;
  /* The symbol holding pc: off in [value, value + size), or off == value
   * for one without a size (assembly without .size: where it ends is not
   * known, so past its first byte pc is not named after it; glibc's dladdr
   * does the same, musl's names it at any distance). Past the nearest
   * symbol's end, pc is in a function without a dynamic symbol (a static
   * one): none. Nested ones: the innermost; aliases: the first. */
  const ElfW(Sym) *best = NULL;
  uintptr_t best_value = 0;
  for (size_t i = 0; i < n; i++) {
    const ElfW(Sym) *s = (const ElfW(Sym) *)(symtab + i * syment);
    if (s->st_value > off || s->st_value <= best_value) continue; /* most symbols: one test */
    if (s->st_size ? off - s->st_value >= s->st_size : off != s->st_value) continue;
    if (!wanted(s)) continue;
    best = s;
    best_value = s->st_value;
  }
  if (!best || best->st_name >= strsz) return 1;
  l->out->start = info->dlpi_addr + best->st_value;
  l->out->size = best->st_size;
  const char *name = (const char *)strtab + best->st_name;
  size_t k = 0;
  for (; k + 1 < l->name_size && best->st_name + k < strsz && name[k]; k++) l->name[k] = name[k];
  if (l->name_size) l->name[k] = 0;
  l->found = true;
  return 1;
}

bool ta_prof_sym(uintptr_t pc, ta_prof_sym_t *out, char *name, size_t name_size) {
  lookup_t l = {pc, out, name, name_size, false};
  dl_iterate_phdr(find, &l);
  return l.found;
}
