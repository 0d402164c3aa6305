# Fault churn: does returning memory after every GC cost CPU in page faults?
# A Ruby process keeps a long-lived cache (20,000 hashes holding strings and
# arrays; `--replace` entries replaced per request, so old objects die) and
# serves "requests" that each load a batch of 2,000..12,000 records (2-20 MB
# of hashes and strings that live for the request) and render a response.
# With `--trim 1` the loaded allocator's trim (bench/alloc.rb:
# trimalloc_trim, mi_collect, mallctl purge, or glibc malloc_trim(0)), with
# `--trim 2` the trim trimalloc's GC/job hooks use (trimalloc_trim_idle, which
# keeps what is about to be reused; the same as 1 for the others), with
# `--trim 3` the allocator's trim at most once a second (the default rate
# limit of the gem's and the Python package's hooks), is
# called after every major GC, detected by polling GC.stat(:major_gc_count)
# after each request; `--gc-every K` also forces a major GC every K requests
# (out-of-band GC between requests, as some app servers and job runners do).
# Reports CPU time and minor page faults of the request loop, RSS sampled
# after every request (mean), RSS when idle (after the loop, the cache
# dropped, GC.start and, with --trim 1, a trim), and the counts of major GCs
# and trims during the loop.
#   ruby ruby_gc_trim.rb [--requests N] [--trim 0|1] [--gc-every K] [--replace N]
require_relative 'alloc'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

REQUESTS = opt('--requests', 120)
TRIM_MODE = opt('--trim', 0) # 0: none, 1: trim, 2: trimalloc_trim_idle, 3: trim at most once a second
TRIM = TRIM_MODE > 0
GC_EVERY = opt('--gc-every', 4)
CACHE_N = 20_000
REPLACE = opt('--replace', 5)

def entry(i)
  {
    'id' => i,
    'name' => "cached entry #{i} " + ('n' * (i % 200)),
    'body' => "body of #{i};" * (40 + i % 400),
    'list' => Array.new(4 + i % 16) { |k| "item #{k} of entry #{i} #{'l' * (k * 8)}" },
  }
end

# A request loads a batch of "records" (2,000..12,000 hashes holding
# strings of 100..2,000 B: some 2-20 MB that lives for the request, long
# enough to survive minor GCs), renders them into a response, and replaces
# REPLACE cache entries. The batch becomes garbage at the end of the request.
def request(n, cache)
  rows = Array.new(2_000 + (n * 7_919) % 10_000) do |k|
    { 'id' => k, 'title' => "record #{k} of request #{n} " + ('t' * ((k * 31) % 1_900)), 'n' => k * n }
  end
  out = +''
  rows.each { |r| out << r['title'][0, 60] << "\n" if r['id'] % 4 == 0 }
  REPLACE.times { |k| cache[(n * 7919 + k * 104_729) % CACHE_N] = entry(n * REPLACE + k) }
  out.bytesize + rows.size
end

trim_name, trim = BenchAlloc.trim_function(idle: TRIM_MODE == 2)
cache = Array.new(CACHE_N) { |i| entry(i) }
GC.start
flt0 = BenchAlloc.minflt
cpu0 = BenchAlloc.cpu
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
majors = majors0 = GC.stat(:major_gc_count)
trims = 0
last_trim = nil
rss_sum = 0
check = 0
REQUESTS.times do |n|
  check += request(n, cache)
  GC.start if GC_EVERY > 0 && (n + 1) % GC_EVERY == 0
  m = GC.stat(:major_gc_count)
  if m != majors
    majors = m
    if TRIM && (TRIM_MODE != 3 || last_trim.nil? || Process.clock_gettime(Process::CLOCK_MONOTONIC) - last_trim >= 1.0)
      trim.call
      trims += 1
      last_trim = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
  rss_sum += BenchAlloc.rss
end
t1 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
cpu1 = BenchAlloc.cpu
flt1 = BenchAlloc.minflt
# Idle: what the process holds once the work is done and collected.
cache = nil
GC.start
trim.call if TRIM
BenchAlloc.report('ruby-gc-trim', 'trim' => TRIM, 'trim_fn' => trim_name, 'requests' => REQUESTS,
                                  'gc_every' => GC_EVERY, 'check' => check,
                                  'loop_s' => t1 - t0, 'cpu_s' => cpu1 - cpu0,
                                  'rss_mean' => rss_sum / REQUESTS, 'rss_idle' => BenchAlloc.rss,
                                  'minflt' => flt1 - flt0,
                                  'major_gcs' => majors - majors0, 'trims' => trims)
