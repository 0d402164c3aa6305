# Does the gem's GC hook make Ruby threads wait, or make the GC run more?
#
# `--threads` worker threads (4) serve "requests": each request builds 64
# strings of 32 B..4 KiB (log-uniform, so they are malloc'd, not embedded),
# keeps one in 8 in the thread's bounded cache (2,000 slots, replaced at
# random: a small live set that ages into the old generation) and drops the
# rest, then waits 0.1 ms as if for I/O (a point where the GVL changes hands,
# as in a server's threads). A burst thread makes `--bursts` (4) bursts: it
# builds `--burst-mb` MiB (200) of strings of 512 B..2 KiB, holds them 100 ms
# (long enough to be promoted, so only a major GC frees them), drops them, and
# waits `--pause-ms` ms (1500: the hook's default rate limit is one trim per
# second, so every burst can get its trim). The GC runs when Ruby decides:
# nothing calls GC.start during the work.
#
# A ticker thread sleeps `--tick-us` us (500) in a loop and records, at each
# wake-up, the time since its previous tick: a long gap is a time it could
# not get the GVL (a GC, a thread holding it, or a trim that held it). At each
# tick it also reads whether a trim is running (Trimalloc.policy_stats[:busy])
# and the trims completed so far (Trimalloc::GC.stats[:trims] + deferred); it
# does that in every configuration, so that its own cost is the same in all.
# A gap "overlaps a trim" when a trim was running at either of its ends, or
# the trim counter moved at its end or at the next tick (a trim that started
# and ended inside it; the hook's counter moves once the trimming thread has
# the GVL again). If a trim held the GVL, no tick could happen while it runs:
# the gap around it would be at least as long as the trim, and no tick would
# see one running.
#
#   --hook 0: the gem loaded, its hook off (the ticker reads its counters)
#   --hook 1: Trimalloc::GC.enable with its defaults (major_only: true,
#             min_interval: 1.0), enabled when the work starts: on trimalloc
#             it trims trimalloc, else glibc (malloc_trim(0))
# Needs the gem on the load path (ruby -I <built extension> -I ext-ruby/lib).
#
# Reports: major and minor GCs and GC time (GC.stat) during the work; ticks;
# the longest gap, its 99th and 99.9th percentiles, the longest gap that
# overlaps a trim; ticks that saw a trim running; trims (Trimalloc.stats:
# hook's and deferred), the time they took in all (trim_ns) and the longest
# (each time the counter moved: the mean of the trims completed since the
# previous reading, so exact when one completed); bytes they returned; wall
# and CPU time of the work; RSS at the end and peak (VmHWM).
#   ruby ruby_gvl.rb [--threads 4] [--bursts 4] [--burst-mb 200] [--pause-ms 1500]
#                    [--tick-us 500] [--hook 0|1]
require_relative 'alloc'
require 'trimalloc'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

THREADS = opt('--threads', 4)
BURSTS = opt('--bursts', 4)
BURST_MB = opt('--burst-mb', 200)
PAUSE_MS = opt('--pause-ms', 1500)
TICK_US = opt('--tick-us', 500)
HOOK = opt('--hook', 0)
PER_REQUEST = 64
KEEP_ONE_IN = 8
CACHE = 2_000
IO_WAIT = 0.0001
MIN_SIZE = 32
MAX_SIZE = 4096

def size_of(rng)
  (MIN_SIZE * ((MAX_SIZE.to_f / MIN_SIZE)**rng.rand)).to_i
end

def vm_hwm
  File.read('/proc/self/status')[/^VmHWM:\s+(\d+)/, 1].to_i * 1024
end

def mono
  Process.clock_gettime(Process::CLOCK_MONOTONIC)
end

# Trims completed: [the hook's (counted with the GVL back), the policy's
# deferred ones (run by a background thread of the gem's that never holds the
# GVL)].
def trims_done
  [Trimalloc::GC.stats[:trims], Trimalloc.policy_stats[:deferred]]
end

def pct(sorted, q)
  return nil if sorted.empty?

  sorted[[(q * sorted.size).ceil - 1, 0].max]
end

GC.start
st0 = Trimalloc.stats
gc0 = GC.stat
Trimalloc::GC.enable if HOOK == 1
$stop = false
cpu0 = BenchAlloc.cpu
t0 = mono

gaps = []
busy = [] # per tick: a trim was running (1), the trim counter moved (2)
trim_at = {} # tick => mean duration (s) of the trims completed since the previous reading
trim_by = {} # tick => "hook", "deferred" or "hook+deferred"
ticker = Thread.new do
  tick = TICK_US / 1e6
  prev = mono
  seen = trims_done
  seen_ns = st0[:trim_ns]
  seen_trims = st0[:trims]
  until $stop
    sleep tick
    now = mono
    gaps << now - prev
    prev = now
    flag = Trimalloc.policy_stats[:busy] ? 1 : 0
    n = trims_done
    if n != seen
      trim_by[gaps.size - 1] = [n[0] != seen[0] ? 'hook' : nil, n[1] != seen[1] ? 'deferred' : nil].compact.join('+')
      seen = n
      flag |= 2
      st = Trimalloc.stats
      if st[:trims] > seen_trims
        trim_at[gaps.size - 1] = (st[:trim_ns] - seen_ns) / 1e9 / (st[:trims] - seen_trims)
        seen_ns = st[:trim_ns]
        seen_trims = st[:trims]
      end
    end
    busy << flag
  end
end

requests = Array.new(THREADS, 0)
workers = Array.new(THREADS) do |tn|
  Thread.new(tn) do |k|
    rng = Random.new(1000 + k)
    cache = Array.new(CACHE)
    sum = 0
    until $stop
      PER_REQUEST.times do
        s = 'x' * size_of(rng)
        sum += s.bytesize
        cache[rng.rand(CACHE)] = s if rng.rand(KEEP_ONE_IN).zero?
      end
      requests[k] += 1
      sleep IO_WAIT
    end
    sum
  end
end

burst_bytes = 0
burster = Thread.new do
  rng = Random.new(7)
  sleep 0.3 # the workers' caches fill first
  BURSTS.times do
    held = []
    bytes = 0
    n = 0
    while bytes < BURST_MB << 20
      s = 'b' * (512 + rng.rand(1536))
      held << s
      bytes += s.bytesize
      sleep IO_WAIT if ((n += 1) % 1000).zero? # a request that builds a big response
    end
    burst_bytes += bytes
    sleep 0.1
    held = nil # rubocop:disable Lint/UselessAssignment
    sleep PAUSE_MS / 1000.0
  end
  $stop = true
end

burster.join
check = workers.sum(&:value)
ticker.join
t1 = mono
cpu1 = BenchAlloc.cpu
gc1 = GC.stat
st1 = Trimalloc.stats
hook = Trimalloc::GC.stats
rss_end = BenchAlloc.rss

# The gaps that overlap a trim (see the top of the file).
n = gaps.size
in_trim = Array.new(n) do |i|
  (busy[i] & 1 != 0) || (i.positive? && busy[i - 1] & 1 != 0) ||
    (busy[i] & 2 != 0) || (i + 1 < n && busy[i + 1] & 2 != 0)
end
trim_gaps = (0...n).select { |i| in_trim[i] }.map { |i| gaps[i] }
# One episode per reading of the trim counters that moved: whose trims they
# were (the hook's, run by a Ruby thread with the GVL released, or deferred,
# run by the policy's thread), their mean duration, the longest gap
# overlapping them (from the tick before the first flagged tick to the tick
# after the reading), and the ticks that saw a trim running.
episodes = []
from = nil
(0...n).each do |i|
  from ||= i if busy[i] != 0
  next unless trim_at.key?(i)

  span = ([from - 1, 0].max..[i + 1, n - 1].min).select { |j| in_trim[j] }
  episodes << { 'by' => trim_by[i], 'trim_ms' => trim_at[i] * 1000.0,
                'gap_ms' => span.map { |j| gaps[j] }.max.to_f * 1000.0,
                'busy_ticks' => (from..i).count { |j| busy[j] & 1 != 0 } }
  from = nil
end
worst = episodes.max_by { |e| e['trim_ms'] }
sorted = gaps.sort
ms = ->(v) { v.nil? ? -1 : v * 1000.0 }

BenchAlloc.report('ruby-gvl',
                  'threads' => THREADS, 'bursts' => BURSTS, 'burst_mb' => BURST_MB, 'hook' => HOOK,
                  'trim_fn' => HOOK == 1 ? "Trimalloc::GC.enable (backend #{Trimalloc.backend})" : 'none',
                  'burst_bytes' => burst_bytes, 'requests' => requests.sum,
                  'major_gcs' => gc1[:major_gc_count] - gc0[:major_gc_count],
                  'minor_gcs' => gc1[:minor_gc_count] - gc0[:minor_gc_count],
                  'gc_ms' => gc1[:time] - gc0[:time],
                  'ticks' => n, 'tick_us' => TICK_US,
                  'gap_max_ms' => ms.call(sorted.last), 'gap_p99_ms' => ms.call(pct(sorted, 0.99)),
                  'gap_p999_ms' => ms.call(pct(sorted, 0.999)),
                  'gap_trim_max_ms' => ms.call(trim_gaps.max), 'gaps_in_trims' => trim_gaps.size,
                  'ticks_during_trim' => busy.count { |f| f & 1 != 0 },
                  'trims' => st1[:trims] - st0[:trims], 'trim_ms' => (st1[:trim_ns] - st0[:trim_ns]) / 1e6,
                  'trim_max_ms' => worst ? worst['trim_ms'] : -1,
                  'gap_at_longest_trim_ms' => worst ? worst['gap_ms'] : -1,
                  'busy_ticks_at_longest_trim' => worst ? worst['busy_ticks'] : -1,
                  'episodes' => episodes,
                  'trimmed_bytes' => st1[:trimmed_bytes] - st0[:trimmed_bytes],
                  'hook_trims' => hook[:trims], 'hook_skipped' => hook[:skipped],
                  'hook_coalesced' => hook[:coalesced], 'hook_sweeps' => hook[:sweeps],
                  'deferred' => Trimalloc.policy_stats[:deferred],
                  'wall_s' => t1 - t0, 'cpu_s' => cpu1 - cpu0,
                  'rss_end' => rss_end, 'peak' => vm_hwm, 'check_sum' => check)
