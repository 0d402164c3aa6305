#!/usr/bin/env bash
# The heap-misuse probes of mimalloc-bench's security suite (its bench/security
# folder: overflows, underflows, double and invalid frees, use after free,
# reuse), built from a local checkout and run under glibc's malloc and
# trimalloc's default and hardened builds (LD_PRELOAD). No network.
#
#   bench/security.sh [options] PATH-TO-MIMALLOC-BENCH
#     --build DIR         where the probes are built (default bench/build/security)
#     --allocators LIST   glibc,trimalloc,trimalloc-hardened (default: all three);
#                         names as in bench/lib.sh; NAME=PATH: the library at PATH
#     --timeout S         per probe (default 1, as mimalloc-bench's bench.sh)
#
# Built as mimalloc-bench builds them (bench/CMakeLists.txt, Release, and
# bench/security/CMakeLists.txt): each C probe three times, ALLOCATION_SIZE 8
# (_small), 4096 (_medium) and 256*1024 (_large), -O3 with -fno-inline and
# friends; each C++ probe once, 4096, -std=c++17 -fsized-deallocation.
#
# Caught, as bench.sh's `security` test counts it: a probe prints NOT_CAUGHT
# when it gets past the misuse; it is caught ([+]) when its output has no
# NOT_CAUGHT and it did not time out, whatever stopped it (an abort with the
# allocator's message, a SIGSEGV, a non-zero exit). "late crash" (NOT_CAUGHT,
# then a crash: at exit, say) and timeouts count as not caught, as there.
# Each row also says how the probe ended (exit status or signal) and, for
# trimalloc, whether it printed a `trimalloc: error:` line.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=$HERE/build/security
ALLOCS=glibc,trimalloc,trimalloc-hardened
TIMEOUT=1
MB=
while [ $# -gt 0 ]; do
  case $1 in
  --build) BUILD=$2; shift 2 ;;
  --allocators) ALLOCS=$2; shift 2 ;;
  --timeout) TIMEOUT=$2; shift 2 ;;
  -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
  -*) echo "unknown option $1" >&2; exit 2 ;;
  *) MB=$1; shift ;;
  esac
done
SRC=$MB/bench/security
if [ -z "$MB" ] || [ ! -f "$SRC/common.h" ]; then
  echo "usage: bench/security.sh [options] PATH-TO-MIMALLOC-BENCH (no $SRC/common.h)" >&2
  exit 2
fi

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
allocators "$ALLOCS"

# ---- build (bench/CMakeLists.txt: Release, warnings off) ----
CC=${CC:-cc}
CXX=${CXX:-c++}
CFLAGS_MB="-O3 -DNDEBUG -w -Wno-implicit-function-declaration -Wno-implicit-int -Wno-int-conversion -Wno-incompatible-pointer-types"
CFLAGS_SEC="-Wno-free-nonheap-object -fno-inline -fno-builtin-inline -fno-inline-small-functions -fno-ipa-pure-const"
mkdir -p "$BUILD"
probes=()
for f in "$SRC"/*.c; do
  name=$(basename "$f" .c)
  for v in small:8 medium:4096 'large:256*1024'; do
    exe=${name}_${v%%:*}
    # shellcheck disable=SC2086 # flag lists
    if [ ! -x "$BUILD/$exe" ] || [ "$f" -nt "$BUILD/$exe" ]; then
      $CC $CFLAGS_MB $CFLAGS_SEC "-DALLOCATION_SIZE=${v#*:}" -o "$BUILD/$exe" "$f" ||
        { echo "build of $exe failed" >&2; exit 1; }
    fi
    probes+=("$exe")
  done
done
for f in "$SRC"/*.cc; do
  exe=$(basename "$f" .cc)
  # shellcheck disable=SC2086
  if [ ! -x "$BUILD/$exe" ] || [ "$f" -nt "$BUILD/$exe" ]; then
    $CXX -O3 -DNDEBUG -w -std=c++17 -fsized-deallocation -DALLOCATION_SIZE=4096 -o "$BUILD/$exe" "$f" ||
      { echo "build of $exe failed" >&2; exit 1; }
  fi
  probes+=("$exe")
done
mapfile -t probes < <(printf '%s\n' "${probes[@]}" | sort)

# ---- run ----
TMP=$(mktemp -d /tmp/trimalloc-security.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
declare -A caught
for a in "${ALLOC_LIST[@]}"; do caught[$a]=0; done

# run_probe ALLOC EXE: prints "[+] how" or "[-] how"
run_probe() {
  local lib out err rc how mark env_args=()
  lib=$(lib_of "$1")
  [ -n "$lib" ] && env_args=(LD_PRELOAD="$lib")
  out=$TMP/out err=$TMP/err
  # in a subshell whose own stderr is dropped: bash's "Aborted" job notices
  { (cd "$BUILD" && exec timeout -k 1 "$TIMEOUT" env "${env_args[@]}" "./$2" >"$out" 2>"$err" </dev/null); } 2>/dev/null
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then how=timeout
  elif [ "$rc" -gt 128 ]; then how=$(kill -l $((rc - 128)) 2>/dev/null || echo "sig$((rc - 128))")
  else how="exit$rc"
  fi
  if grep -a -q 'trimalloc: error:' "$err"; then how="$how,msg"; fi
  if grep -a -q NOT_CAUGHT "$out"; then
    mark="-"
    [ "$rc" -ne 0 ] && how="late:$how"
  elif [ "$how" = timeout ]; then mark="-"
  else mark="+"
  fi
  echo "$mark $how"
}

printf '%-40s' probe
for a in "${ALLOC_LIST[@]}"; do printf ' %-22s' "${a%%=*}"; done
echo
for p in "${probes[@]}"; do
  printf '%-40s' "$p"
  for a in "${ALLOC_LIST[@]}"; do
    r=$(run_probe "$a" "$p")
    [ "${r%% *}" = "+" ] && caught[$a]=$((caught[$a] + 1))
    printf ' %-22s' "[${r%% *}] ${r#* }"
  done
  echo
done
echo
echo "caught, of ${#probes[@]} probes (timeout ${TIMEOUT}s):"
for a in "${ALLOC_LIST[@]}"; do printf '  %-20s %d\n' "${a%%=*}" "${caught[$a]}"; done
