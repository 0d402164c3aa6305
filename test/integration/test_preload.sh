#!/usr/bin/env bash
# The preload library under real programs. Each case asserts the program's
# result AND that trimalloc served it: with TRIMALLOC_SHOW_STATS=1 every
# process prints `trimalloc: stats {...}` on stderr at exit, and those stats
# must show allocations (> 0, and the size of the work where it is known).
#
#   test/integration/test_preload.sh [path/to/libtrimalloc.so]
#
# Ends with `N passed, N failed`; exits non-zero on any failure.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LIB=${1:-${TRIMALLOC_LIB:-$ROOT/core/build/libtrimalloc.so}}
LIB=$(cd "$(dirname "$LIB")" && pwd)/$(basename "$LIB")
PY=/usr/bin/python3 # Debian's, not whatever python3 is first on PATH
LIMIT=120

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  echo "ok - $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL - $1"
  [ -n "${2:-}" ] && echo "$2" | head -20 | sed 's/^/    /'
}
check() { # check NAME COMMAND...: passes when the command succeeds
  local name=$1
  shift
  if "$@"; then ok "$name"; else fail "$name"; fi
}

TMP=$(mktemp -d /tmp/trimalloc-preload.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

# Unset anything the caller's environment might set for the allocator.
unset LD_PRELOAD PYTHONMALLOC $(env | grep -o '^TRIMALLOC_[A-Z_]*' || true)

# Runs a command with the library preloaded and the stats printed at exit.
# Output: $TMP/out (stdout), $TMP/err (stderr); returns the command's status.
preloaded() {
  env LD_PRELOAD="$LIB" TRIMALLOC_SHOW_STATS=1 timeout -k 5 "$LIMIT" "$@" >"$TMP/out" 2>"$TMP/err"
}

# The largest value of a stats field over every stats line in $TMP/err.
stat_max() {
  grep '^trimalloc: stats {' "$TMP/err" | grep -o "\"$1\":[0-9]*" | cut -d: -f2 | sort -n | tail -1
}
stats_lines() { grep -c '^trimalloc: stats {' "$TMP/err"; }

# served NAME MIN_ALLOCATIONS [MIN_PEAK_ACTIVE]: the stats lines prove it.
served() {
  local name=$1 min=$2 peak=${3:-0} n a p
  n=$(stats_lines)
  a=$(stat_max allocations)
  p=$(stat_max peak_active)
  if [ "${n:-0}" -ge 1 ] && [ "${a:-0}" -gt "$min" ] && [ "${p:-0}" -ge "$peak" ]; then
    ok "$name: served by trimalloc ($n stats lines, allocations up to $a, peak_active up to $p)"
  else
    fail "$name: served by trimalloc (stats lines: ${n:-0}, allocations: ${a:-none} > $min?, peak_active: ${p:-none} >= $peak?)" "$(cat "$TMP/err")"
  fi
}

echo "# library: $LIB"
if [ ! -f "$LIB" ]; then
  fail "library exists: $LIB"
  echo "$passed passed, $failed failed"
  exit 1
fi

# ---- the library itself ----
needed=$(readelf -d "$LIB" | grep NEEDED | grep -o '\[.*\]' | tr -d '[]' | sort | tr '\n' ' ')
bad_needed=$(echo "$needed" | tr ' ' '\n' | grep -v -E '^(libc\.so\.6|ld-linux[-a-z0-9_.]*\.so\.[0-9]+)?$' || true)
if [ -z "$bad_needed" ]; then ok "NEEDED names only libc ($needed)"; else fail "NEEDED names only libc: $needed"; fi

# Defined dynamic symbols with default (or protected) visibility: ld 2.40
# also lists the heap profiler's section bounds there (__start_ta_prof_text,
# __stop_ta_prof_text) with HIDDEN visibility, which no other object can bind.
exports=$(readelf -W --dyn-syms "$LIB" | awk '$7 != "UND" && $6 != "HIDDEN" && ($4 == "FUNC" || $4 == "IFUNC" || $4 == "OBJECT" || $4 == "NOTYPE") && $5 != "LOCAL" {print $8}' | sed 's/@.*//' | sort)
std="malloc calloc realloc free reallocarray posix_memalign aligned_alloc memalign valloc pvalloc malloc_usable_size malloc_trim"
# glibc's introspection, answered for trimalloc's heap (core/compat.c)
compat="mallinfo mallinfo2 malloc_stats malloc_info mallopt cfree"
# sized frees, checked against the block (core/sized.c): C23's, and C++'s operator
# delete(void *, size_t) and delete[](void *, size_t)
compat="$compat free_sized _ZdlPvm _ZdaPvm"
missing=""
for f in $std $compat; do echo "$exports" | grep -qx "$f" || missing="$missing $f"; done
if [ -z "$missing" ]; then ok "exports the standard names"; else fail "exports the standard names: missing$missing"; fi
api="trimalloc_malloc trimalloc_free trimalloc_trim trimalloc_stats trimalloc_stats_json trimalloc_option_get trimalloc_option_set trimalloc_option_name trimalloc_version
  trimalloc_prof_start trimalloc_prof_stop trimalloc_prof_interval trimalloc_prof_dump trimalloc_prof_reset_peak
  trimalloc_prof_set_tag trimalloc_prof_set_frames_hook trimalloc_prof_name_frame"
missing=""
for f in $api; do echo "$exports" | grep -qx "$f" || missing="$missing $f"; done
if [ -z "$missing" ]; then ok "exports the trimalloc_* API"; else fail "exports the trimalloc_* API: missing$missing"; fi
allowed_re="^(trimalloc_.*|__libc_.*|__posix_memalign|$(echo $std $compat | tr ' ' '|'))$"
extra=$(echo "$exports" | grep -v -E "$allowed_re" | tr '\n' ' ')
if [ -z "$extra" ]; then ok "exports nothing else (internals hidden)"; else fail "exports nothing else: $extra"; fi

A=$(dirname "$LIB")/libtrimalloc.a
if [ -f "$A" ]; then
  overrides=$(nm -g --defined-only "$A" 2>/dev/null | awk 'NF==3 {print $3}' | grep -x -E "$(echo $std | tr ' ' '|')" | tr '\n' ' ')
  if [ -z "$overrides" ]; then ok "libtrimalloc.a does not define the standard names"; else fail "libtrimalloc.a defines $overrides"; fi
fi

# ---- start-up line, harmless in any program ----
env LD_PRELOAD="$LIB" TRIMALLOC_VERBOSE=1 /bin/true 2>"$TMP/err"
rc=$?
if [ $rc -eq 0 ] && grep -q '^trimalloc: active' "$TMP/err"; then ok "TRIMALLOC_VERBOSE=1 says trimalloc is active"
else fail "TRIMALLOC_VERBOSE=1 says trimalloc is active (status $rc)" "$(cat "$TMP/err")"; fi
out=$(env LD_PRELOAD="$LIB" sh -c 'echo a; ls / | sort | head -1; echo b | tr b c' 2>&1)
if [ "$out" = "$(sh -c 'echo a; ls / | sort | head -1; echo b | tr b c' 2>&1)" ]; then ok "shell pipeline unchanged under preload"
else fail "shell pipeline unchanged under preload" "$out"; fi

# ---- the malloc API by its standard names ----
# ---- malloc before trimalloc's own constructor ----
# A library the program links (libselinux under ls, say) may run its
# constructor before ours and allocate: the size class must be right then too
# (the v2 core once served every size up to 1 KiB from 16-byte blocks there).
cat >"$TMP/early.c" <<'EOF_EARLY'
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
size_t early_usable[4];
__attribute__((constructor)) static void early(void) {
  static const size_t sizes[4] = {472, 100, 8, 1000}; /* the first one decides */
  for (int i = 0; i < 4; i++) {
    char *p = malloc(sizes[i]);
    memset(p, 0x5a, sizes[i]);
    early_usable[i] = malloc_usable_size(p);
    free(p);
  }
}
EOF_EARLY
cat >"$TMP/early_main.c" <<'EOF_MAIN'
#include <stdio.h>
extern size_t early_usable[4];
int main(void) {
  static const size_t sizes[4] = {472, 100, 8, 1000}; /* the first one decides */
  for (int i = 0; i < 4; i++)
    if (early_usable[i] < sizes[i]) { printf("malloc(%zu) had %zu usable bytes\n", sizes[i], early_usable[i]); return 1; }
  puts("ok");
  return 0;
}
EOF_MAIN
if cc -O1 -shared -fPIC -o "$TMP/libearly.so" "$TMP/early.c" 2>"$TMP/cc.err" &&
   cc -O1 -o "$TMP/early" "$TMP/early_main.c" -L"$TMP" -learly -Wl,-rpath,"$TMP" 2>>"$TMP/cc.err"; then
  out=$(env LD_PRELOAD="$LIB" "$TMP/early" 2>&1)
  if [ "$out" = ok ]; then ok "a library constructor's malloc before trimalloc's start gets the size it asked for"
  else fail "a library constructor's malloc before trimalloc's start gets the size it asked for" "$out"; fi
else
  fail "building the early-constructor test" "$(cat "$TMP/cc.err")"
fi

if cc -O1 -o "$TMP/api" "$ROOT/test/integration/test_preload_api.c" 2>"$TMP/cc.err"; then
  preloaded "$TMP/api"
  rc=$?
  while IFS= read -r line; do
    case $line in
    "ok - "*) ok "api: ${line#ok - }" ;;
    "FAIL - "*) fail "api: ${line#FAIL - }" ;;
    esac
  done <"$TMP/out"
  if [ $rc -ne 0 ] && ! grep -q '^FAIL' "$TMP/out"; then fail "api program exited with $rc" "$(cat "$TMP/err")"; fi
else
  fail "build test_preload_api.c" "$(cat "$TMP/cc.err")"
fi

# ---- the heap profiler inside pthread_getattr_np (glibc: it calls realloc
# holding the thread's lock; a sample there must not ask glibc for the
# thread's stack again), every allocation sampled, on new threads ----
cat >"$TMP/getattr.c" <<'EOF_GETATTR'
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
static void *run(void *arg) {
  for (int i = 0; i < 50; i++) {
    pthread_attr_t at;
    if (pthread_getattr_np(pthread_self(), &at) != 0) return arg;
    pthread_attr_destroy(&at);
    free(malloc(100));
  }
  return NULL;
}
int main(void) {
  for (int r = 0; r < 20; r++) {
    pthread_t th[4];
    for (int t = 0; t < 4; t++) pthread_create(&th[t], NULL, run, NULL);
    for (int t = 0; t < 4; t++) pthread_join(th[t], NULL);
  }
  puts("ok");
  return 0;
}
EOF_GETATTR
if cc -O1 -pthread -o "$TMP/getattr" "$TMP/getattr.c" 2>"$TMP/cc.err"; then
  LIMIT_SAVED=$LIMIT LIMIT=30
  TRIMALLOC_PROF=1 TRIMALLOC_PROF_INTERVAL=1 preloaded "$TMP/getattr"
  rc=$?
  LIMIT=$LIMIT_SAVED
  if [ $rc -eq 0 ] && [ "$(cat "$TMP/out")" = ok ] && [ "$(stat_max prof_sampled)" -gt 0 ]; then
    ok "sampling every allocation on threads calling pthread_getattr_np ($(stat_max prof_sampled) samples)"
  else fail "sampling every allocation on threads calling pthread_getattr_np (status $rc: 124 is a hang)" "$(cat "$TMP/err")"; fi
else
  fail "building the pthread_getattr_np test" "$(cat "$TMP/cc.err")"
fi

# ---- python3 with PYTHONMALLOC=malloc: every object through trimalloc ----
if [ -x "$PY" ]; then
  cat >"$TMP/work.py" <<'EOF'
import json, random, threading

def work(seed):
    r = random.Random(seed)
    d = {}
    for i in range(60000):
        k = "k%d_%d" % (i, r.randrange(1000))
        d[k] = [i, str(i) * (i % 7), {"x": i, "y": [r.random() for _ in range(3)]}]
    text = json.dumps(d, sort_keys=True)
    back = json.loads(text)
    total = sum(len(k) + len(v[1]) + len(v[2]["y"]) for k, v in back.items())
    keys = sorted(back, key=lambda k: k[::-1])
    return total, len(text), keys[0], keys[-1]

results = [None] * 4
def run(i):
    results[i] = work(i)
threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("python ok", results)
EOF
  want=$(PYTHONMALLOC=malloc "$PY" "$TMP/work.py" 2>&1)
  PYTHONMALLOC=malloc preloaded "$PY" "$TMP/work.py"
  rc=$?
  got=$(cat "$TMP/out")
  if [ $rc -eq 0 ] && [ "$got" = "$want" ] && [[ $got == "python ok [("* ]]; then ok "python3: allocation-heavy script, same output as under glibc"
  else fail "python3: allocation-heavy script (status $rc)" "got: ${got:0:300}
want: ${want:0:300}
$(grep -v '^trimalloc: stats' "$TMP/err")"; fi
  served "python3" 100000 $((30 * 1024 * 1024))
else
  fail "python3: $PY not found"
fi

# ---- ruby: a multithreaded string workload ----
if command -v ruby >/dev/null; then
  cat >"$TMP/work.rb" <<'EOF'
threads = 4.times.map do |t|
  Thread.new do
    h = {}
    arr = []
    acc = +""
    40_000.times do |i|
      s = "t#{t}-#{i}-" + ("x" * (i % 300))
      h[s] = s.reverse
      arr << s.upcase
      acc << s[0, 8]
      acc = +"" if acc.bytesize > 100_000
    end
    arr.sort!
    [h.size, arr.first, arr.last[0, 20], h.values.sum(&:bytesize), acc.bytesize]
  end
end
puts "ruby ok #{threads.map(&:value).inspect}"
EOF
  want=$(ruby "$TMP/work.rb" 2>&1)
  preloaded ruby "$TMP/work.rb"
  rc=$?
  got=$(cat "$TMP/out")
  if [ $rc -eq 0 ] && [ "$got" = "$want" ] && [[ $got == "ruby ok [["* ]]; then ok "ruby: multithreaded string workload, same output as under glibc"
  else fail "ruby: multithreaded string workload (status $rc)" "got: ${got:0:300}
want: ${want:0:300}
$(grep -v '^trimalloc: stats' "$TMP/err")"; fi
  served "ruby" 10000
else
  fail "ruby: not found"
fi

# ---- git: init, commit, log ----
if command -v git >/dev/null; then
  repo="$TMP/repo"
  mkdir -p "$repo"
  for i in $(seq 1 50); do seq 1 $((i * 20)) >"$repo/file$i.txt"; done
  gitp() { preloaded env GIT_CONFIG_NOSYSTEM=1 HOME="$TMP" git -C "$repo" -c user.name=T -c user.email=t@example.com "$@"; }
  gitp init -q && gitp add . && gitp commit -q -m "first commit" &&
    echo change >>"$repo/file7.txt" && gitp commit -q -am "second commit" && gitp log --format=%s
  rc=$?
  got=$(cat "$TMP/out" | tr '\n' '|')
  if [ $rc -eq 0 ] && [ "$got" = "second commit|first commit|" ]; then ok "git: init, add, commit, log"
  else fail "git: init, add, commit, log (status $rc, log: $got)" "$(grep -v '^trimalloc: stats' "$TMP/err")"; fi
  served "git log" 0
  gitp diff --stat HEAD~1 HEAD
  rc=$?
  if [ $rc -eq 0 ] && grep -q 'file7.txt | 1 +' "$TMP/out"; then ok "git: diff between the commits"
  else fail "git: diff (status $rc)" "$(cat "$TMP/out" "$TMP/err")"; fi
  served "git diff" 0
else
  fail "git: not found"
fi

# ---- gcc: compile (driver, cc1, as, ld all preloaded) and run ----
if command -v gcc >/dev/null; then
  cat >"$TMP/prog.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
int main(void) {
  enum { N = 5000 };
  char **v = malloc(N * sizeof *v);
  for (int i = 0; i < N; i++) {
    v[i] = malloc(16 + i % 100);
    snprintf(v[i], 16, "s%05d", (i * 7919) % N);
  }
  qsort(v, N, sizeof *v, cmp);
  v = realloc(v, 2 * N * sizeof *v);
  printf("%s %s\n", v[0], v[N - 1]);
  for (int i = 0; i < N; i++) free(v[i]);
  free(v);
  return 0;
}
EOF
  preloaded gcc -O2 -Wall -o "$TMP/prog" "$TMP/prog.c"
  rc=$?
  procs=$(stats_lines)
  if [ $rc -eq 0 ] && [ -x "$TMP/prog" ]; then ok "gcc: compiles a C file"
  else fail "gcc: compiles a C file (status $rc)" "$(cat "$TMP/err")"; fi
  if [ "${procs:-0}" -ge 3 ]; then ok "gcc: driver, compiler and linker all ran preloaded ($procs stats lines)"
  else fail "gcc: driver, compiler and linker all ran preloaded (only ${procs:-0} stats lines)" "$(cat "$TMP/err")"; fi
  served "gcc" 1000
  preloaded "$TMP/prog"
  rc=$?
  got=$(cat "$TMP/out")
  if [ $rc -eq 0 ] && [ "$got" = "s00000 s04999" ]; then ok "gcc: the compiled program runs"
  else fail "gcc: the compiled program runs (status $rc, output: $got)" "$(cat "$TMP/err")"; fi
  served "compiled program" 100
else
  fail "gcc: not found"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
