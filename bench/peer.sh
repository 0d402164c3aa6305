#!/usr/bin/env bash
# The peer suite: the benchmarks that live in mimalloc-bench's own bench/
# folder, built from a local checkout (no network) and run as its bench.sh
# runs them, under glibc, jemalloc, mimalloc, TCMalloc and trimalloc
# (LD_PRELOAD; glibc with none).
#
#   bench/peer.sh [options] PATH-TO-MIMALLOC-BENCH
#     --build DIR         where the benchmarks are built (default bench/build/peer)
#     --allocators LIST   glibc,jemalloc,mimalloc,tcmalloc,trimalloc (the default);
#                         names as in bench/lib.sh; NAME=PATH: the library at PATH
#     --runs N            runs of each benchmark under each allocator (default 2),
#                         interleaved: run 1 under every allocator, then run 2, ...
#     --only LIST         these rows only (names as below, e.g. larsonN,rptestN)
#     --timeout S         a run still going after S seconds is killed (default 300)
#     --procs N           bench.sh's `procs` (default nproc, as bench.sh)
#
# Built as mimalloc-bench's bench/CMakeLists.txt builds them (Release: -O3
# -DNDEBUG, its warning flags, gnu89 for cfrac/espresso/barnes, C++17), with
# cc/c++ directly: cmake cannot configure that file without sh6bench/sh8bench,
# whose sources mimalloc-bench does not ship (its build-bench-env.sh downloads
# them); those two rows say so. Rows, arguments and thread counts are
# bench.sh's (procs = nproc): cfrac, espresso, barnes, larsonN-sized, mstressN,
# rptestN, alloc-test1/N, sh6benchN, sh8benchN, xmalloc-testN,
# cache-scratch1/N, glibc-simple, glibc-thread, larsonN, malloc-large,
# mleak10/100, rbstress1/N (/usr/bin/ruby), cache-thrash1/N.
#
# time: as bench.sh records it: the wall time, except for larson (its own
# "relative time"), rptest (2000000 / memory ops per CPU second), xmalloc-test
# (its rtime) and glibc-thread (1e9 / iterations), which run for a fixed time
# and report a rate. Also wall, user+sys CPU, peak RSS and minor faults
# (/usr/bin/time). Each figure: the median of the runs. A run that exits
# non-zero, is killed by a signal or times out is reported in its row.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=$HERE/build/peer
ALLOCS=glibc,jemalloc,mimalloc,tcmalloc,trimalloc
RUNS=2
ONLY=
TIMEOUT=300
PROCS=$(nproc)
MB=
CMDLINE="bench/peer.sh $*"
while [ $# -gt 0 ]; do
  case $1 in
  --build) BUILD=$2; shift 2 ;;
  --allocators) ALLOCS=$2; shift 2 ;;
  --runs) RUNS=$2; shift 2 ;;
  --only) ONLY=$2; shift 2 ;;
  --timeout) TIMEOUT=$2; shift 2 ;;
  --procs) PROCS=$2; shift 2 ;;
  -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
  -*) echo "unknown option $1" >&2; exit 2 ;;
  *) MB=$1; shift ;;
  esac
done
SRC=$MB/bench
if [ -z "$MB" ] || [ ! -f "$SRC/CMakeLists.txt" ] || [ ! -d "$SRC/larson" ]; then
  echo "usage: bench/peer.sh [options] PATH-TO-MIMALLOC-BENCH (no $SRC/CMakeLists.txt)" >&2
  exit 2
fi
SRC=$(cd "$SRC" && pwd)
case $RUNS in '' | *[!0-9]* | 0) echo "--runs: a positive integer, not '$RUNS'" >&2; exit 2 ;; esac

# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
allocators "$ALLOCS"
[ "${ALLOC_LIST[0]%%=*}" = glibc ] || { echo "--allocators: glibc first (the ratios' base)" >&2; exit 2; }

# ---- build (bench/CMakeLists.txt, Release) ----
CC=${CC:-cc}
CXX=${CXX:-c++}
WFLAGS="-w -Wno-implicit-function-declaration -Wno-implicit-int -Wno-int-conversion -Wno-return-mismatch -Wno-incompatible-pointer-types"
CFLAGS_MB="-O3 -DNDEBUG $WFLAGS"
CXXFLAGS_MB="-O3 -DNDEBUG -std=gnu++17 $WFLAGS"
mkdir -p "$BUILD"
declare -A BUILT # program -> "" when built, else why not

# build PROG LANG FLAGS LIBS SOURCES...: LANG c or c++; sources relative to $SRC
build() {
  local prog=$1 lang=$2 flags=$3 libs=$4 srcs=() s newest=0
  shift 4
  for s in "$@"; do
    if [ ! -f "$SRC/$s" ]; then
      BUILT[$prog]="not built: $s is not in the checkout"
      return
    fi
    srcs+=("$SRC/$s")
  done
  for s in "${srcs[@]}"; do [ "$s" -nt "$BUILD/$prog" ] && newest=1; done
  if [ -x "$BUILD/$prog" ] && [ $newest = 0 ]; then BUILT[$prog]=""; return; fi
  local cc=$CC base=$CFLAGS_MB
  [ "$lang" = c++ ] && cc=$CXX base=$CXXFLAGS_MB
  # shellcheck disable=SC2086 # flag lists
  if $cc $base $flags -o "$BUILD/$prog" "${srcs[@]}" $libs >"$BUILD/$prog.log" 2>&1; then
    BUILT[$prog]=""
  else
    rm -f "$BUILD/$prog"
    BUILT[$prog]="not built: $cc failed (see $BUILD/$prog.log)"
  fi
}
pre() { local d=$1 f out=(); shift; for f in "$@"; do out+=("$d/$f"); done; echo "${out[@]}"; }

echo "building in $BUILD" >&2
# shellcheck disable=SC2046 # word lists of sources
{
  build cfrac c "-std=gnu89 -DNOMEMOPT=1" -lm $(pre cfrac cfrac.c pops.c pconst.c pio.c pabs.c pneg.c \
    pcmp.c podd.c phalf.c padd.c psub.c pmul.c pdivmod.c psqrt.c ppowmod.c atop.c ptoa.c itop.c \
    utop.c ptou.c errorp.c pfloat.c pidiv.c pimod.c picmp.c primes.c pcfrac.c pgcd.c)
  build espresso c "-std=gnu89" -lm $(pre espresso cofactor.c cols.c compl.c contain.c cubestr.c \
    cvrin.c cvrm.c cvrmisc.c cvrout.c dominate.c equiv.c espresso.c essen.c exact.c expand.c gasp.c \
    getopt.c gimpel.c globals.c hack.c indep.c irred.c main.c map.c matrix.c mincov.c opo.c pair.c \
    part.c primes.c reduce.c rows.c set.c setc.c sharp.c sminterf.c solution.c sparse.c unate.c \
    utility.c verify.c)
  build barnes c "-std=gnu89" -lm $(pre barnes code.c code_io.c load.c grav.c getparam.c util.c)
  build larson c++ "-Wno-unused-result -DCPP=1" -pthread larson/larson.cpp
  build larson-sized c++ "-Wno-unused-result -fsized-deallocation -DCPP=1 -DSIZED=1" -pthread larson/larson.cpp
  build alloc-test c++ "-DBENCH=4" -pthread alloc-test/test_common.cpp alloc-test/allocator_tester.cpp
  build sh6bench c "-DBENCH=1 -DSYS_MULTI_THREAD=1" -pthread shbench/sh6bench-new.c
  build sh8bench c "-DBENCH=1 -DSYS_MULTI_THREAD=1" -pthread shbench/sh8bench-new.c
  build cache-scratch c++ "" -pthread cache-scratch/cache-scratch.cpp
  build cache-thrash c++ "" -pthread cache-thrash/cache-thrash.cpp
  build xmalloc-test c "" -pthread xmalloc-test/xmalloc-test.c
  build malloc-large c++ "" -pthread malloc-large/malloc-large.cpp
  build mstress c "" -pthread mstress/mstress.c
  build mleak c "" -pthread mleak/mleak.c
  build rptest c "-fpermissive -I$SRC/rptest" "-pthread -lm" rptest/rptest.c rptest/thread.c rptest/timer.c
  build glibc-simple c "" -pthread glibc-bench/bench-malloc-simple.c
  build glibc-thread c "" -pthread glibc-bench/bench-malloc-thread.c
}
if [ -x /usr/bin/ruby ] && [ -f "$SRC/rbstress/stress_mem.rb" ]; then BUILT[ruby]=""
else BUILT[ruby]="not run: no /usr/bin/ruby or rbstress/stress_mem.rb"; fi

# ---- the rows: bench.sh's run_test, procs = $PROCS ----
P=$PROCS P2=$((PROCS * 2))
ROWS=() # "row|program|arguments" ($SRC is substituted)
ROWS+=("cfrac|cfrac|17545186520507317056371138836327483792789528")
ROWS+=("espresso|espresso|$SRC/espresso/largest.espresso")
ROWS+=("barnes|barnes|") # reads barnes/input on stdin
ROWS+=("larsonN-sized|larson-sized|5 8 1000 5000 100 4141 $P")
ROWS+=("mstressN|mstress|$P 50 25")
ROWS+=("rptestN|rptest|$P 0 1 2 500 1000 100 8 16000")
ROWS+=("alloc-test1|alloc-test|1")
[ "$P" != 1 ] && ROWS+=("alloc-testN|alloc-test|$((P > 16 ? 16 : P))")
ROWS+=("sh6benchN|sh6bench|$P2")
ROWS+=("sh8benchN|sh8bench|$P2")
ROWS+=("xmalloc-testN|xmalloc-test|-w $P -t 5 -s 64")
ROWS+=("cache-scratch1|cache-scratch|1 1000 1 2000000 $P")
[ "$P" != 1 ] && ROWS+=("cache-scratchN|cache-scratch|$P 1000 1 2000000 $P")
ROWS+=("glibc-simple|glibc-simple|")
ROWS+=("glibc-thread|glibc-thread|$P")
ROWS+=("larsonN|larson|5 8 1000 5000 100 4141 $P")
ROWS+=("malloc-large|malloc-large|")
ROWS+=("mleak10|mleak|5")
ROWS+=("mleak100|mleak|50")
ROWS+=("rbstress1|ruby|$SRC/rbstress/stress_mem.rb 1")
[ "$P" != 1 ] && ROWS+=("rbstressN|ruby|$SRC/rbstress/stress_mem.rb $P")
ROWS+=("cache-thrash1|cache-thrash|1 1000 1 2000000 $P")
[ "$P" != 1 ] && ROWS+=("cache-thrashN|cache-thrash|$P 1000 1 2000000 $P")

if [ -n "$ONLY" ]; then
  IFS=, read -r -a only <<<"$ONLY"
  for o in "${only[@]}"; do
    printf '%s\n' "${ROWS[@]}" | grep -q "^$o|" || { echo "--only: no row $o" >&2; exit 2; }
  done
  keep=()
  for r in "${ROWS[@]}"; do
    for o in "${only[@]}"; do [ "${r%%|*}" = "$o" ] && keep+=("$r"); done
  done
  ROWS=("${keep[@]}")
fi

# ---- run ----
TMP=$(mktemp -d /tmp/trimalloc-peer.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
RAW=$TMP/raw # row alloc run status time wall cpu rss_kib minflt
: >"$RAW"
START_UTC=$(date -u '+%Y-%m-%d %H:%M:%S')
LOAD_BEFORE=$(uptime)
T0=$(date +%s)

# the time bench.sh records for ROW from its output OUT and wall time WALL
bench_time() {
  local v
  case $1 in
  larson*) v=$(sed -n 's/.* time: \([0-9.]*\).*/\1/p' "$2" | head -1) ;;
  rptest*) v=$(sed -n 's/.*\.\.\.\([0-9]*\) memory ops.*/\1/p' "$2" | head -1)
    [ -n "$v" ] && [ "$v" != 0 ] && v=$(awk -v o="$v" 'BEGIN { printf "%.4f", 2000000 / o }') || v= ;;
  xmalloc*) v=$(sed -n 's/^rtime: \([0-9.]*\).*/\1/p' "$2" | head -1) ;;
  glibc-thread) v=$(sed -n 's/^\([0-9][0-9]*\) iterations.*/\1/p' "$2" | head -1)
    [ -n "$v" ] && [ "$v" != 0 ] && v=$(awk -v o="$v" 'BEGIN { printf "%.4f", 1e9 / o }') || v= ;;
  *) v=$3 ;;
  esac
  echo "${v:--}"
}

# run_one ROW PROG ARGS ALLOC RUN: appends a line to $RAW
run_one() {
  local row=$1 prog=$2 args=$3 alloc=$4 run=$5 lib env_args=() cmd in=/dev/null rc status t
  lib=$(lib_of "$alloc")
  [ -n "$lib" ] && env_args=(LD_PRELOAD="$lib")
  if [ "$prog" = ruby ]; then cmd=/usr/bin/ruby; else cmd=./$prog; fi
  [ "$prog" = barnes ] && in=$SRC/barnes/input
  local outf=$TMP/out tf=$TMP/time wall rss user sys minflt
  rm -f "$tf"
  # shellcheck disable=SC2086 # args: bench.sh's word list
  { (cd "$BUILD" && exec /usr/bin/time -o "$tf" -f '%e %M %U %S %R' \
    timeout -k 5 "$TIMEOUT" env "${env_args[@]}" "$cmd" $args <"$in" >"$outf" 2>&1); } 2>/dev/null
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timeout(${TIMEOUT}s)"
  elif [ "$rc" -gt 128 ]; then status=$(kill -l $((rc - 128)) 2>/dev/null || echo "sig$((rc - 128))")
  elif [ "$rc" != 0 ]; then status="exit$rc"
  else status=ok
  fi
  if grep -a -q 'trimalloc: error:' "$outf"; then status="$status,msg"; fi
  read -r wall rss user sys minflt < <(tail -1 "$tf" 2>/dev/null) || true
  [ -n "${minflt:-}" ] || { wall=- rss=- user=0 sys=0 minflt=-; [ "$status" = ok ] && status="no-time"; }
  t=$(bench_time "$row" "$outf" "$wall")
  [ "$t" = - ] && [ "$status" = ok ] && status="no-result"
  if [ "$status" != ok ]; then
    mkdir -p "$BUILD/failed"
    cp "$outf" "$BUILD/failed/$row.${alloc%%=*}.$run.out"
  fi
  echo "$row ${alloc%%=*} $run $status $t $wall $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') $rss $minflt" >>"$RAW"
  echo "  $row ${alloc%%=*} run $run: $status time $t wall $wall rss ${rss}K" >&2
}

NA=${#ALLOC_LIST[@]}
for r in "${ROWS[@]}"; do
  IFS='|' read -r row prog args <<<"$r"
  key=$prog
  if [ -n "${BUILT[$key]}" ]; then
    echo "$row - - ${BUILT[$key]// /_}" >>"$RAW"
    echo "  $row: ${BUILT[$key]}" >&2
    continue
  fi
  for ((run = 1; run <= RUNS; run++)); do
    # interleaved, and the order turns by one each run
    for ((i = 0; i < NA; i++)); do
      a=${ALLOC_LIST[$(((i + run - 1) % NA))]}
      run_one "$row" "$prog" "$args" "$a" "$run"
    done
  done
done
ELAPSED=$(($(date +%s) - T0))
LOAD_AFTER=$(uptime)

# ---- report ----
pkgs=""
for p in libc6 libjemalloc2 libmimalloc2.0 libtcmalloc-minimal4 ruby3.1 gcc-12; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) && [ -n "$v" ] && pkgs="$pkgs, $p $v"
done
tmv=$(sed -n 's/^#define TRIMALLOC_VERSION "\(.*\)".*/\1/p' "$ROOT/core/trimalloc.h" 2>/dev/null)
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)
[ -n "$(git -C "$ROOT" status --porcelain -- core 2>/dev/null)" ] && commit="$commit, core/ modified"
mbcommit=$(git -C "$MB" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
echo "mimalloc-bench's own benchmarks (bench.sh's rows and arguments, procs=$PROCS), started $START_UTC UTC"
echo "command: $CMDLINE"
echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)," \
  "$(($(getconf _PHYS_PAGES) * $(getconf PAGE_SIZE) / 1048576)) MiB RAM, Linux $(uname -r)"
echo "packages: ${pkgs#, }"
echo "trimalloc: ${tmv:-?} (commit $commit); mimalloc-bench: $MB ($mbcommit)"
printf 'allocators:'
for a in "${ALLOC_LIST[@]}"; do l=$(lib_of "$a"); printf ' %s (%s)' "${a%%=*}" "${l:-no preload}"; done
echo
echo "each figure: median of $RUNS run(s), allocators interleaved; ${ELAPSED} s in all; timeout ${TIMEOUT} s"
echo "load before: $LOAD_BEFORE"
echo "load after:  $LOAD_AFTER"
ALLOCS_SHOWN=$(for a in "${ALLOC_LIST[@]}"; do printf '%s ' "${a%%=*}"; done)
# shellcheck disable=SC2086 # one argument per allocator
/usr/bin/python3 - "$RAW" $ALLOCS_SHOWN <<'EOF'
import math, statistics, sys
raw, allocs = sys.argv[1], sys.argv[2:]
rows, data, notbuilt = [], {}, {}
for line in open(raw):
    f = line.split()
    row = f[0]
    if row not in rows:
        rows.append(row)
    if f[1] == "-":
        notbuilt[row] = f[3].replace("_", " ")
        continue
    data.setdefault((row, f[1]), []).append(f[3:])

def med(row, a):
    """(status, time, wall, cpu, rss MiB, minflt) medians; status not 'ok' if any run failed"""
    runs = data.get((row, a), [])
    bad = [r[0] for r in runs if r[0] != "ok"]
    if bad or not runs:
        return (bad[0] if bad else "missing") + ("" if len(bad) <= 1 else " (%d/%d runs)" % (len(bad), len(runs))), None
    col = lambda i: statistics.median(float(r[i]) for r in runs)
    return "ok", (col(1), col(2), col(3), col(4) / 1024, col(5))

W = 10
def table(title, idx, fmt, ratio=True):
    print()
    print(title)
    print("%-15s" % "benchmark" + "".join("%*s" % (W + 2, a[:W + 1]) for a in allocs))
    for row in rows:
        if row in notbuilt:
            print("%-15s  %s" % (row, notbuilt[row]))
            continue
        base = med(row, allocs[0])
        cells = []
        for i, a in enumerate(allocs):
            st, m = med(row, a)
            if st != "ok":
                cells.append(st)
            elif i == 0 or not ratio:
                cells.append(fmt % m[idx])
            elif base[0] != "ok" or base[1][idx] == 0:
                cells.append("-")
            else:
                cells.append("%.3f" % (m[idx] / base[1][idx]))
        print("%-15s" % row + "".join("%*s" % (W + 2, c) for c in cells))

table("time (s; bench.sh's: wall, or the benchmark's relative time for larson, rptest, xmalloc-test,"
      " glibc-thread): glibc's, then ratio to glibc", 0, "%.3f")
table("peak RSS (MiB): glibc's, then ratio to glibc", 3, "%.1f")
table("wall time (s), median", 1, "%.2f", ratio=False)
table("CPU time user+sys (s), median", 2, "%.2f", ratio=False)
table("peak RSS (MiB), median", 3, "%.1f", ratio=False)
table("minor faults, median", 4, "%.0f", ratio=False)

ok_rows = [r for r in rows if r not in notbuilt and all(med(r, a)[0] == "ok" for a in allocs)]
big = [r for r in ok_rows if med(r, allocs[0])[1][3] > 10]
def geo(rs, a, idx):
    if not rs:
        return float("nan")
    return math.exp(sum(math.log(med(r, a)[1][idx] / med(r, allocs[0])[1][idx]) for r in rs) / len(rs))
print()
left = [r for r in rows if r not in ok_rows]
print("geomeans of the ratios to glibc, over the %d benchmarks that ran under every allocator%s:"
      % (len(ok_rows), " (left out: %s)" % ", ".join(left) if left else ""))
print("%-15s" % "" + "".join("%*s" % (W + 2, a[:W + 1]) for a in allocs))
print("%-15s" % "time" + "".join("%*.3f" % (W + 2, geo(ok_rows, a, 0)) for a in allocs))
print("%-15s" % ("peak RSS (%d)" % len(big)) + "".join("%*.3f" % (W + 2, geo(big, a, 3)) for a in allocs))
print("(peak RSS over the %d benchmarks whose glibc peak is over 10 MiB: %s)" % (len(big), ", ".join(big)))
for a in allocs[1:]:
    slow = []
    for r in rows:
        if r in notbuilt:
            continue
        st, m = med(r, a)
        b = med(r, allocs[0])
        if st != "ok":
            slow.append("%s (%s)" % (r, st))
        elif b[0] == "ok" and m[0] > b[1][0]:
            slow.append("%s %.2fx" % (r, m[0] / b[1][0]))
    print("%s slower than glibc (or failed): %s" % (a, ", ".join(slow) if slow else "none"))
EOF
