# Major GCs on a multithreaded string churn: does a trim after major GCs make
# Ruby collect more often? `--threads` threads (6) each keep `--slots` (2000)
# strings, 99% of 32 B..4 KiB and 1% of 16..256 KiB (both log-uniform), and
# `--iters` times (250,000) replace one at random and build a transient string
# joined from 1..8 new pieces of the same sizes (all garbage at once). Then
# the threads finish, the program drops every string, runs GC.start, and
# idles for `--idle-ms` ms (1000), reading its RSS without allocating.
#
# --trim 1: malloc_trim(0) (through Fiddle) when GC.stat(:major_gc_count) has
#   changed, polled by the worker threads every 64 iterations and once after
#   the final GC.start (glibc-style "malloc_trim after each major GC").
# --trim 2: the gem's hook, Trimalloc::GC.enable (min_interval: --min-interval,
#   1.0 by default), enabled when the work starts (needs the gem on the load
#   path: ruby -I <built extension> -I ext-ruby/lib).
# --trim 3: no trim, the gem loaded as with 2 (the same objects in the heap).
# --diag 1: also the major GCs by GC.latest_gc_info(:major_by), sampled by the
#   worker threads after every iteration (the sampling changes the timing).
#
# Reports: major and minor GCs of the work (thread start to the end of the
# final GC.start); GC.stat's heap and malloc counters when the threads end
# (heap_allocated_pages decides the major GCs: Ruby sets it in the first ~15
# GCs, and about 101 pages gives twice the major GCs of about 110); RSS at the
# end (after the drop, GC.start and any trim) and after `--idle-ms` idle, peak
# RSS (VmHWM), wall and CPU time of the work.
#   ruby ruby_gc_churn.rb [--threads 6] [--iters 250000] [--slots 2000] [--idle-ms 1000]
#                         [--trim 0|1|2|3] [--min-interval S] [--diag 0|1]
require_relative 'alloc'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

THREADS = opt('--threads', 6)
ITERS = opt('--iters', 250_000)
SLOTS = opt('--slots', 2000)
IDLE_MS = opt('--idle-ms', 1000)
TRIM_MODE = opt('--trim', 0)
DIAG = opt('--diag', 0) == 1
MIN_INTERVAL = ARGV.index('--min-interval') ? Float(ARGV[ARGV.index('--min-interval') + 1]) : 1.0
POLL_EVERY = 64

def log_uniform(rng, lo, hi)
  (lo * ((hi.to_f / lo)**rng.rand)).to_i
end

def size_of(rng)
  rng.rand(100).zero? ? log_uniform(rng, 16 << 10, 256 << 10) : log_uniform(rng, 32, 4096)
end

# RSS from /proc/self/statm, read and parsed without allocating a Ruby object.
STATM = File.open('/proc/self/statm')
STATM_BUF = String.new(capacity: 256)
def rss_noalloc
  STATM.sysseek(0)
  STATM.sysread(255, STATM_BUF)
  i = 0
  i += 1 while STATM_BUF.getbyte(i) != 32 # skip "size "
  i += 1
  pages = 0
  while (c = STATM_BUF.getbyte(i)) && c >= 48 && c <= 57
    pages = pages * 10 + (c - 48)
    i += 1
  end
  pages * BenchAlloc::PAGE
end

trim_fn = 'none'
poll = nil
case TRIM_MODE
when 1
  f = Fiddle::Function.new(Fiddle::Handle::DEFAULT['malloc_trim'], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
  trim_fn = 'malloc_trim(0) when major_gc_count changes'
  $trim_lock = Mutex.new
  $trims = 0
  poll = lambda do
    m = GC.stat(:major_gc_count)
    next if m == $majors_seen

    $trim_lock.synchronize do
      m = GC.stat(:major_gc_count)
      if m != $majors_seen
        $majors_seen = m
        f.call(0)
        $trims += 1
      end
    end
  end
when 2, 3
  require 'trimalloc'
  trim_fn = TRIM_MODE == 2 ? format('Trimalloc::GC.enable (backend %s)', Trimalloc.backend) : 'none (the gem loaded)'
end

# --diag: major GCs by reason, sampled after every iteration.
$by = Hash.new(0)
$diag_seen = GC.stat(:major_gc_count)
def diag_sample
  m = GC.stat(:major_gc_count)
  return if m == $diag_seen

  $by[GC.latest_gc_info(:major_by)] += m - $diag_seen
  $diag_seen = m
end

GC.start
base = BenchAlloc.rss
majors0 = GC.stat(:major_gc_count)
minors0 = GC.stat(:minor_gc_count)
$majors_seen = $diag_seen = majors0
Trimalloc::GC.enable(min_interval: MIN_INTERVAL) if TRIM_MODE == 2
cpu0 = BenchAlloc.cpu
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
threads = Array.new(THREADS) do |t|
  Thread.new(t) do |tn|
    rng = Random.new(1000 + tn)
    ws = Array.new(SLOTS) { 'w' * size_of(rng) }
    sum = 0
    ITERS.times do |i|
      ws[rng.rand(SLOTS)] = 'r' * size_of(rng)
      tmp = Array.new(1 + rng.rand(8)) { 't' * size_of(rng) }.join
      sum += tmp.bytesize
      poll.call if poll && (i % POLL_EVERY).zero?
      diag_sample if DIAG
    end
    sum
  end
end
check = threads.sum(&:value)
st = GC.stat
diag = DIAG ? { 'major_by' => $by.transform_keys(&:to_s) } : {}
%i[heap_allocated_pages heap_allocatable_pages heap_free_slots heap_live_slots old_objects
   old_objects_limit malloc_increase_bytes malloc_increase_bytes_limit oldmalloc_increase_bytes
   oldmalloc_increase_bytes_limit total_allocated_pages total_freed_pages].each { |k| diag[k.to_s] = st[k] }
threads = nil
GC.start
poll&.call
t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
cpu1 = BenchAlloc.cpu
majors = GC.stat(:major_gc_count) - majors0
minors = GC.stat(:minor_gc_count) - minors0
rss_end = rss_noalloc
sleep(IDLE_MS / 1000.0)
rss_idle = rss_noalloc
trims = case TRIM_MODE
        when 1 then $trims
        when 2 then Trimalloc::GC.stats[:trims]
        else 0
        end
if TRIM_MODE == 2
  hs = Trimalloc::GC.stats
  diag['hook_skipped'] = hs[:skipped]
  diag['hook_coalesced'] = hs[:coalesced]
  diag['hook_handed'] = hs[:handed]
  diag['deferred_trims'] = Trimalloc.policy_stats[:deferred]
end
BenchAlloc.report('ruby-gc-churn', { 'threads' => THREADS, 'iters' => ITERS, 'slots' => SLOTS, 'check' => check,
                                     'trim_fn' => trim_fn, 'baseline' => base,
                                     'peak' => File.read('/proc/self/status')[/^VmHWM:\s+(\d+)/, 1].to_i * 1024,
                                     'rss_end' => rss_end, 'rss_idle' => rss_idle, 'idle_ms' => IDLE_MS,
                                     'wall_work_s' => t1 - t0, 'cpu_work_s' => cpu1 - cpu0,
                                     'major_gcs' => majors, 'minor_gcs' => minors, 'trims' => trims }.merge(diag))
