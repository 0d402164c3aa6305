# What a request through the gem's Rack middleware costs, in process.
#
# A trivial Rack app (`[200, {"content-type" => "text/plain"}, ["ok"]]`) is
# called `--requests` times (200,000) per round, as a server does: call, read
# the body, close it if it has #close (the middleware's trim decision runs in
# the close of its Rack::BodyProxy). The variants, in two phases, each timed
# in every round of its phase (`--rounds`, 7; the order rotated from round to
# round), with the bare app timed in every round too:
#   phase 1, before any trim in the process (a server between trims, with
#   less than min_free free: the check reads the sampled free-bytes figure):
#     bare            the app alone
#     counter only    Trimalloc::Rack, every: 10**12, min_free: nil (the
#                     decision is one counter: what the wrapping costs)
#     min_free only   every: nil, min_free: 64 << 20
#   phase 2, trims happening (the first is due at once; then the process-wide
#   rate limit defers the rest to the policy's background thread, one a second):
#     bare
#     default         every: 100, min_free: 64 << 20, min_interval: 1.0 (the
#                     README's line and the middleware's defaults)
#     no min_free     every: 100, min_free: nil
#     min_free 0      every: nil, min_free: 0 (a trim due after every request)
# Reports, per variant, the median over the rounds of the ns per request, and
# of the extra ns per request over the bare app measured in the same round;
# the middleware's counters (events, trims), and the policy's free-bytes reads
# and deferred trims. Needs the gem on the load path (ruby -I <built
# extension> -I ext-ruby/lib) and Rack (Debian's ruby-rack).
#   ruby middleware_cost.rb [--requests 200000] [--rounds 7]
require_relative 'alloc'
require 'trimalloc'
require 'trimalloc/rack'

def opt(name, default)
  i = ARGV.index(name)
  i ? Integer(ARGV[i + 1]) : default
end

REQUESTS = opt('--requests', 200_000)
ROUNDS = opt('--rounds', 7)
MIB64 = 64 << 20

HEADERS = { 'content-type' => 'text/plain' }.freeze
APP = ->(_env) { [200, HEADERS, ['ok']] }

PHASES = [
  [['bare', APP],
   ['counter_only', Trimalloc::Rack.new(APP, every: 10**12, min_free: nil, min_interval: 1.0)],
   ['min_free_only', Trimalloc::Rack.new(APP, every: nil, min_free: MIB64, min_interval: 1.0)]],
  [['bare', APP],
   ['default', Trimalloc::Rack.new(APP, every: 100, min_free: MIB64, min_interval: 1.0)],
   ['no_min_free', Trimalloc::Rack.new(APP, every: 100, min_free: nil, min_interval: 1.0)],
   ['min_free_0', Trimalloc::Rack.new(APP, every: nil, min_free: 0, min_interval: 1.0)]],
].freeze

def env_for
  { 'REQUEST_METHOD' => 'GET', 'PATH_INFO' => '/', 'QUERY_STRING' => '', 'SERVER_NAME' => 'localhost',
    'SERVER_PORT' => '80', 'rack.version' => [1, 3], 'rack.url_scheme' => 'http' }
end

def mono_ns
  Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
end

# n requests as a server makes them; returns ns per request.
def run(app, env, n)
  bytes = 0
  t0 = mono_ns
  i = 0
  while i < n
    _status, _headers, body = app.call(env)
    body.each { |chunk| bytes += chunk.bytesize }
    body.close if body.respond_to?(:close)
    i += 1
  end
  raise 'wrong body' unless bytes == 2 * n

  (mono_ns - t0).to_f / n
end

def median(xs)
  s = xs.sort
  m = s.size / 2
  s.size.odd? ? s[m] : (s[m - 1] + s[m]) / 2.0
end

env = env_for
per = Hash.new { |h, k| h[k] = [] }
extra = Hash.new { |h, k| h[k] = [] }
reads = []
cpu0 = BenchAlloc.cpu
PHASES.each do |variants|
  reads0 = Trimalloc.policy_stats[:free_reads]
  variants.each { |_, app| run(app, env, [REQUESTS / 10, 1000].max) } # warm-up
  GC.start
  ROUNDS.times do |r|
    order = variants.rotate(r % variants.size)
    got = order.to_h { |name, app| [name, run(app, env, REQUESTS)] }
    got.each { |name, ns| per[name] << ns }
    got.each { |name, ns| extra[name] << ns - got['bare'] unless name == 'bare' }
  end
  reads << Trimalloc.policy_stats[:free_reads] - reads0
end
cpu1 = BenchAlloc.cpu

ps = Trimalloc.policy_stats
fields = { 'requests' => REQUESTS, 'rounds' => ROUNDS, 'language' => 'ruby', 'backend' => Trimalloc.backend.to_s,
           'free_source' => Trimalloc.free_source.to_s, 'cpu_s' => cpu1 - cpu0,
           'free_reads_phase1' => reads[0], 'free_reads_phase2' => reads[1], 'deferred' => ps[:deferred],
           'bare_ns' => median(per['bare']) }
PHASES.flatten(1).each do |name, app|
  next if name == 'bare'

  st = app.stats
  fields["#{name}_ns"] = median(per[name])
  fields["extra_#{name}_ns"] = median(extra[name])
  fields["trims_#{name}"] = st[:trims]
  fields["events_#{name}"] = st[:events]
end
fields['trims_middleware'] = PHASES.flatten(1).sum { |name, app| name == 'bare' ? 0 : app.stats[:trims] }
BenchAlloc.report('middleware-cost', fields)
