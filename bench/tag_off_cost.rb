# What Trimalloc::Rack (call, read the body, close it) and Trimalloc::Sidekiq
# (call with a block) cost per request or job with the heap profiler off (the
# default) or, with --on, sampling at a 1 GiB interval (on, almost never
# sampling). Policies counter-only (every: 10**12, min_free: nil: no trim).
# Each variant (bare, mw) timed in every round (order rotated); prints JSON:
# the median ns per request of each and the median of (mw - bare) in the same
# round. The Ruby half of tag_off_cost.py (issue 16), on trimalloc (LD_PRELOAD).
#   ruby -I<ext-ruby/lib, built> tag_off_cost.rb [--requests 200000] [--rounds 5] [--on]
# --only GROUP [--bare]: that group's middleware (or bare app) once, N
# requests, nothing printed (for instruction counts with cachegrind).
require 'json'
require 'trimalloc'
require 'trimalloc/rack'
require 'trimalloc/sidekiq'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end
N = opt('--requests', 200_000)
ROUNDS = opt('--rounds', 5)
Trimalloc::Profile.start(interval: 1 << 30) if ARGV.include?('--on')
HEADERS = { 'content-type' => 'text/plain' }.freeze
APP = ->(_env) { [200, HEADERS, ['ok']] }
ENV_ = { 'REQUEST_METHOD' => 'GET', 'SCRIPT_NAME' => '', 'PATH_INFO' => '/users/42', 'QUERY_STRING' => '' }.freeze

def mono = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)

def rack_run(app)
  lambda do |n|
    t0 = mono
    i = 0
    while i < n
      _s, _h, body = app.call(ENV_)
      body.each { |c| c }
      body.close if body.respond_to?(:close)
      i += 1
    end
    (mono - t0).to_f / n
  end
end

JOB = { 'class' => 'ImportJob' }.freeze
def sidekiq_run(mw)
  lambda do |n|
    t0 = mono
    i = 0
    if mw
      while i < n
        mw.call(nil, JOB, 'default') { i }
        i += 1
      end
    else
      blk = proc { i }
      while i < n
        blk.call
        i += 1
      end
    end
    (mono - t0).to_f / n
  end
end

def median(xs) = xs.sort[xs.size / 2]

groups = {
  'rack' => [['bare', rack_run(APP)], ['mw', rack_run(Trimalloc::Rack.new(APP, every: 10**12, min_free: nil))]],
  'sidekiq' => [['bare', sidekiq_run(nil)], ['mw', sidekiq_run(Trimalloc::Sidekiq.new(every: 10**12, min_free: nil))]],
}
if ARGV.include?('--only')
  g = ARGV[ARGV.index('--only') + 1]
  groups.fetch(g).to_h[ARGV.include?('--bare') ? 'bare' : 'mw'].call(N)
  exit 0
end
out = { backend: Trimalloc.backend, interval: Trimalloc::Profile.interval }
groups.each do |g, variants|
  variants.each { |_, f| f.call(N / 10) }
  GC.start
  per = Hash.new { |h, k| h[k] = [] }
  extra = []
  ROUNDS.times do |r|
    k = r % variants.size
    got = (variants[k..] + variants[0...k]).to_h { |name, f| [name, f.call(N)] }
    got.each { |name, ns| per[name] << ns }
    extra << got['mw'] - got['bare']
  end
  out[g] = { bare: median(per['bare']), mw: median(per['mw']), extra: median(extra) }
end
puts JSON.generate(out)
