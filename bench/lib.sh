# shellcheck shell=bash
# Sourced by bench/peer.sh and bench/security.sh (bash; ROOT set to the
# checkout): the allocators they preload, by name.
#   glibc               no preload
#   trimalloc           core/build/libtrimalloc.so (make -C core)
#   trimalloc-hardened  core/build-hardened/libtrimalloc.so (make -C core hardened)
#   jemalloc, mimalloc, tcmalloc: Debian's (libjemalloc2, libmimalloc2.0,
#                       libtcmalloc-minimal4)
#   NAME=PATH           the library at PATH (another build)

LIBDIR=/usr/lib/x86_64-linux-gnu

# lib_of NAME: the library to preload for NAME ("" for glibc); exits 2 on an
# unknown name.
lib_of() {
  case $1 in
  *=*) realpath -m -- "${1#*=}" ;; # absolute: the programs may run elsewhere
  glibc) echo "" ;;
  trimalloc) echo "$ROOT/core/build/libtrimalloc.so" ;;
  trimalloc-hardened) echo "$ROOT/core/build-hardened/libtrimalloc.so" ;;
  jemalloc) echo "$LIBDIR/libjemalloc.so.2" ;;
  mimalloc) echo "$LIBDIR/libmimalloc.so.2" ;;
  tcmalloc) echo "$LIBDIR/libtcmalloc_minimal.so.4" ;;
  *) echo "unknown allocator '$1' (glibc, trimalloc, trimalloc-hardened, jemalloc, mimalloc, tcmalloc or NAME=PATH)" >&2; exit 2 ;;
  esac
}

# How to get NAME's library when it is missing.
lib_hint() {
  case $1 in
  *=*) echo "build it" ;;
  trimalloc) echo "make -C core" ;;
  trimalloc-hardened) echo "make -C core hardened" ;;
  jemalloc) echo "apt-get install libjemalloc2" ;;
  mimalloc) echo "apt-get install libmimalloc2.0" ;;
  tcmalloc) echo "apt-get install libtcmalloc-minimal4" ;;
  esac
}

# allocators LIST: splits LIST (comma-separated names) into the array
# ALLOC_LIST; exits 2 on an unknown name or a missing library.
allocators() {
  local a lib
  IFS=, read -r -a ALLOC_LIST <<<"$1"
  [ ${#ALLOC_LIST[@]} -gt 0 ] || { echo "--allocators: no allocator in '$1'" >&2; exit 2; }
  for a in "${ALLOC_LIST[@]}"; do
    lib=$(lib_of "$a") || exit 2
    if [ -n "$lib" ] && [ ! -f "$lib" ]; then
      echo "$lib missing ($a: $(lib_hint "$a"))" >&2
      exit 2
    fi
  done
}
