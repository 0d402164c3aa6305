# Ruby threads churning strings, then idle: what does the process keep?
# `--threads` threads (6) each keep a working set of strings of 32 B..32 KiB
# (log-uniform: every power of two in between equally common) and replace a
# random entry `--ops` times (each replacement also makes one temporary
# string of another such size, garbage at once); the working sets together
# hold about `--live-mb` MiB (40). Then the threads finish (Ruby keeps their
# native threads parked for reuse), the program drops every string, runs
# GC.start, and idles for `--idle-ms` ms (2000), reading its RSS every 50 ms
# without allocating (sysread into a preallocated buffer).
#
# --trim 1: glibc-style "malloc_trim after each major GC", as users write it:
#   glibc's malloc_trim(0) through Fiddle, called when GC.stat(:major_gc_count)
#   has changed (polled by the worker threads every 64 replacements, and by the
#   main thread after the final GC.start).
# --trim 2: the gem's hook, Trimalloc::GC.enable with its defaults (a
#   rate-limited trim after major GCs), enabled when the work starts; needs the
#   gem on the load path (ruby -I <built extension> -I ext-ruby/lib). It trims
#   trimalloc when trimalloc is the process allocator, else glibc (malloc_trim).
#
# Reports: RSS at start, peak (VmHWM), at the end (after the drop, GC.start and
# any trim), after 0.5, 1 and `--idle-ms` ms idle; wall time, CPU time and
# minor faults of the work (thread start to the end of the final GC and trim);
# major GCs and trims.
#   ruby ruby_threads.rb [--threads 6] [--ops N] [--live-mb 40] [--idle-ms 2000] [--trim 0|1|2]
require_relative 'alloc'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

THREADS = opt('--threads', 6)
OPS = opt('--ops', 60_000)
LIVE_MB = opt('--live-mb', 40)
IDLE_MS = opt('--idle-ms', 2000)
TRIM_MODE = opt('--trim', 0)
POLL_EVERY = 64
MIN_SIZE = 32
MAX_SIZE = 32 * 1024
# Mean of the log-uniform distribution on [MIN_SIZE, MAX_SIZE].
MEAN_SIZE = (MAX_SIZE - MIN_SIZE) / Math.log(MAX_SIZE.to_f / MIN_SIZE)
SLOTS = (LIVE_MB * 1024 * 1024 / MEAN_SIZE / THREADS).round

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

def vm_hwm
  File.read('/proc/self/status')[/^VmHWM:\s+(\d+)/, 1].to_i * 1024
end

trims = 0
trim_fn = 'none'
case TRIM_MODE
when 1
  f = Fiddle::Function.new(Fiddle::Handle::DEFAULT['malloc_trim'], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
  trim_fn = 'malloc_trim(0) when major_gc_count changes'
  $trim_lock = Mutex.new
  $majors_seen = GC.stat(:major_gc_count)
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
when 2
  require 'trimalloc' # Trimalloc::GC.enable is called once the work starts
  trim_fn = 'Trimalloc::GC.enable (backend %s)' % Trimalloc.backend
  poll = nil
else
  poll = nil
end

def size_of(rng)
  (MIN_SIZE * ((MAX_SIZE.to_f / MIN_SIZE)**rng.rand)).to_i
end

GC.start
base = BenchAlloc.rss
majors0 = GC.stat(:major_gc_count)
$majors_seen = majors0 # --trim 1: only the major GCs of the work count
Trimalloc::GC.enable if TRIM_MODE == 2
flt0 = BenchAlloc.minflt
cpu0 = BenchAlloc.cpu
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
sets = Array.new(THREADS)
threads = Array.new(THREADS) do |t|
  Thread.new(t) do |tn|
    rng = Random.new(1000 + tn)
    ws = Array.new(SLOTS) { 'w' * size_of(rng) }
    sets[tn] = ws
    sum = 0
    OPS.times do |i|
      k = rng.rand(SLOTS)
      sum += ws[k].bytesize
      ws[k] = 'r' * size_of(rng)
      tmp = 't' * size_of(rng)
      sum += tmp.getbyte(0)
      poll.call if poll && (i % POLL_EVERY).zero?
    end
    sum
  end
end
check = threads.sum(&:value)
peak_live = sets.sum { |ws| ws.sum(&:bytesize) }
threads = nil
sets = nil
GC.start
poll&.call
trims = $trims if TRIM_MODE == 1
t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
cpu1 = BenchAlloc.cpu
flt1 = BenchAlloc.minflt
majors = GC.stat(:major_gc_count) - majors0
rss_end = rss_noalloc
rss_500ms = rss_1s = rss_idle = nil
idle0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
k = 1
while (k * 50) <= IDLE_MS
  target = idle0 + k * 0.05
  now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sleep(target - now) if target > now
  r = rss_noalloc
  ms = k * 50
  rss_500ms = r if ms == 500
  rss_1s = r if ms == 1000
  rss_idle = r if ms == IDLE_MS
  k += 1
end
flt2 = BenchAlloc.minflt
cpu2 = BenchAlloc.cpu
if TRIM_MODE == 2
  st = Trimalloc::GC.stats
  trims = st[:trims]
end
BenchAlloc.report('ruby-threads', 'threads' => THREADS, 'ops' => OPS, 'slots' => SLOTS, 'check' => check,
                                  'trim_fn' => trim_fn, 'live' => peak_live, 'baseline' => base,
                                  'peak' => vm_hwm, 'rss_end' => rss_end,
                                  'rss_500ms' => rss_500ms, 'rss_1s' => rss_1s,
                                  'rss_idle' => rss_idle, 'idle_ms' => IDLE_MS,
                                  'wall_work_s' => t1 - t0, 'cpu_work_s' => cpu1 - cpu0,
                                  'minflt_work' => flt1 - flt0, 'cpu_idle_s' => cpu2 - cpu1,
                                  'minflt_idle' => flt2 - flt1,
                                  'major_gcs' => majors, 'trims' => trims)
