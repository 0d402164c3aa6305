# Ruby interpreter workload (throughput): `--threads` threads each build
# request-like data: a string grown by appending, split into an array, a
# hash of strings keyed by strings, and a joined text; one result in fifty is
# kept in a per-thread working set of 200 entries, the rest is garbage. What
# reaches malloc from Ruby 3.1 is the bodies of strings, arrays and hashes,
# and GC sweeps free them from whichever thread triggered the GC.
#   ruby ruby_churn.rb [--iters N] [--threads N]
require_relative 'alloc'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

ITERS = opt('--iters', 20_000)
THREADS = opt('--threads', 4)

def work(id, iters)
  keep = Array.new(200)
  total = 0
  iters.times do |i|
    s = +"request #{id}-#{i}: "
    (8 + i % 24).times { |k| s << "segment #{k} of item #{i} with some padding text;" }
    words = s.split(';')
    h = {}
    words.each_with_index { |w, k| h[w] = w.upcase * (1 + k % 4) }
    text = h.map { |k, v| "#{k}=#{v.bytesize}:#{v[0, 40]}" }.join('&')
    rows = words.map { |w| [w.size, w.reverse, w.tr('aeiou', 'AEIOU')] }
    total += text.bytesize + rows.size
    keep[(i / 50) % 200] = text if i % 50 == 0
  end
  total + keep.compact.sum(&:bytesize)
end

t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
sums = Array.new(THREADS) { |id| Thread.new { work(id, ITERS / THREADS) } }.map(&:value)
t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
BenchAlloc.report('ruby', 'iters' => ITERS, 'threads' => THREADS, 'check' => sums.sum,
                          'loop_s' => t1 - t0, 'gc_count' => GC.count, 'major_gc_count' => GC.stat(:major_gc_count))
