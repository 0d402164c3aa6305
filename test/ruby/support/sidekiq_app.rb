# frozen_string_literal: true

# PRELOAD_IN=sidekiq_app.rb: the preload line where the README puts it for
# Sidekiq, first in the file given to -r (the process re-executes itself here,
# before Sidekiq connects or starts a thread).
require "trimalloc/preload" if ENV["PRELOAD_IN"] == "sidekiq_app.rb"

# A Sidekiq 6 application for sidekiq_test.rb. TRIM=1 installs the
# middleware; everything else is the same in both runs.
require "sidekiq"
require "json"

# Counts a finished job once everything after it has run, the trimalloc
# middleware's trim included (it is the outermost middleware): a test that
# waits for the count waits for the trim, whatever the machine's speed.
class DoneCounter
  def call(_worker, _job, _queue)
    yield
  ensure
    Sidekiq.redis { |r| r.incr("trimalloc:done") }
  end
end

Sidekiq.configure_server do |config|
  config.redis = { url: ENV.fetch("REDIS_URL") }
  config.server_middleware do |chain|
    chain.add DoneCounter
    case ENV["TRIM"]
    when "1"
      require "trimalloc/sidekiq"
      # the middleware's own mechanics: a trim after every job, unpriced (the
      # refault budget, the job hooks' default, would hold some back; its
      # logic is policy_test.rb's, end to end the default-budget test's)
      chain.add Trimalloc::Sidekiq, min_interval: 0, refault_share: 0
    when "defaults"
      require "trimalloc/sidekiq"
      chain.add Trimalloc::Sidekiq # as the README writes it
    end
  end
end

# Long-lived objects (a cache), a few per job, between the job's garbage.
CACHE = []
CACHE_LOCK = Mutex.new

class HeavyJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(mb)
    junk = []
    kept = []
    (mb * 1024).times do |i|
      s = "j" * 1000
      junk << s
      kept << s if (i % 1024).zero?
    end
    junk.clear
    CACHE_LOCK.synchronize { CACHE.concat(kept) }
  end
end

# Collects the garbage of the last jobs, so both runs end on the same heap.
class CollectJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    GC.start
  end
end

# A burst: MiB of strings, dropped and collected in the job, so that at its
# end they are free but held until a trim returns them. Stores the RSS at
# that moment (trimalloc:burst).
class BurstJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(mb)
    HeavyJob.new.perform(mb)
    GC.start
    Sidekiq.redis { |r| r.set("trimalloc:burst", File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i * 1024) }
  end
end

# Stores what this process runs on, Trimalloc.stats, the middleware's
# counters and refault_share, and the policy's counters (JSON) in redis, for
# the test to read.
class StatsJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    require "trimalloc"
    trimmers = defined?(Trimalloc::Sidekiq) ? Trimalloc::Sidekiq.trimmers : []
    hook = trimmers.map { |t| t.stats.merge(refault_share: t.refault_share) }
    info = Trimalloc.stats.merge(rss: Trimalloc.rss, pid: Process.pid, active: Trimalloc.active?,
                                 comm: File.read("/proc/self/comm").chomp, hook: hook,
                                 policy: Trimalloc.policy_stats)
    Sidekiq.redis { |r| r.set("trimalloc:stats", JSON.generate(info)) }
  end
end

# The profiler's jobs (sidekiq_test.rb's profile test, TRIMALLOC_PROF=1):
# ProfileJob keeps n strings of 2 MB, so its samples stay live with its class
# as their tag; ProfileTopJob stores Trimalloc::Profile.top(0) (JSON) in redis.
PROFILE_KEEP = []

class ProfileJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform(n)
    n.times { PROFILE_KEEP << "p" * 2_000_000 }
  end
end

class ProfileTopJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    require "trimalloc"
    Sidekiq.redis { |r| r.set("trimalloc:profile", JSON.generate(Trimalloc::Profile.top(0))) }
  end
end
