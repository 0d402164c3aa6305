# Scenario 1: Ruby, threads and strings (the classic "Ruby memory bloat").
#
# THREADS threads each keep a bounded working set of KEEP strings and churn
# many more: every iteration builds a string of a random size (log-uniform,
# 32 B .. 32 KiB, so its body is malloc'd), does a little string work on it,
# and with probability 1/8 it replaces a random entry of the thread's working
# set; everything else is garbage. Ruby's GC frees the garbage from whichever
# thread triggered it, while the survivors stay scattered over the pages.
#
# When the work is done the program runs GC.start, prints one line
#   demo-done {"floor": ..., ...}
# on stdout (the floor = ObjectSpace.memsize_of_all: the bytes of every live
# Ruby object, bodies included) and waits with its working set still alive
# until stdin is closed, so the demo can sample the idle process.
#
#   ruby ruby_threads.rb [--iters N] [--threads N] [--keep N] [--gc-trim]
# --gc-trim: require "trimalloc" and call Trimalloc::GC.enable (trim after
# each major GC's sweep, on whichever backend this process runs).
require "json"
require "objspace"

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

ITERS = opt("--iters", 200_000) # per thread
THREADS = opt("--threads", 8)
KEEP = opt("--keep", 1_000)     # strings kept per thread
GC_TRIM = ARGV.include?("--gc-trim")

if GC_TRIM
  require "trimalloc"
  Trimalloc::GC.enable
end

MIN_LOG = Math.log(32)
MAX_LOG = Math.log(32 * 1024)

def work(id, iters, keep)
  rng = Random.new(1_000 + id)
  churned = 0
  iters.times do |i|
    size = Math.exp(MIN_LOG + rng.rand * (MAX_LOG - MIN_LOG)).to_i
    s = "t#{id}-#{i}:" + ("abcdefgh" * (size / 8 + 1))[0, size]
    t = s.upcase
    churned += t.bytesize + s.bytesize
    keep[rng.rand(keep.size)] = s if rng.rand(8).zero?
  end
  churned
end

t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
sets = Array.new(THREADS) { Array.new(KEEP) }
churned = Array.new(THREADS) { |id| Thread.new { work(id, ITERS, sets[id]) } }.sum(&:value)
work_s = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0

GC.start
kept = sets.sum { |set| set.sum { |s| s ? s.bytesize : 0 } }
result = {
  "floor" => ObjectSpace.memsize_of_all,
  "floor_what" => "ObjectSpace.memsize_of_all after GC.start",
  "working_set_bytes" => kept,
  "churned_bytes" => churned,
  "work_s" => work_s.round(3),
  "gc_count" => GC.count,
  "major_gc_count" => GC.stat(:major_gc_count),
}
if GC_TRIM
  result["backend"] = Trimalloc.backend.to_s
  result["gc_trim"] = Trimalloc::GC.stats
end
$stdout.puts "demo-done #{JSON.generate(result)}"
$stdout.flush
$stdin.read # idle until the demo closes our stdin
exit(sets.size == THREADS ? 0 : 1)
