# frozen_string_literal: true

# A Sidekiq 6 application for sidekiq_test.rb. TRIM=1 installs the
# middleware; everything else is the same in both runs.
require "sidekiq"

Sidekiq.configure_server do |config|
  config.redis = { url: ENV.fetch("REDIS_URL") }
  if ENV["TRIM"] == "1"
    require "trimalloc/sidekiq"
    config.server_middleware { |chain| chain.add Trimalloc::Sidekiq, min_interval: 0 }
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
    Sidekiq.redis { |r| r.incr("trimalloc:done") }
  end
end

# Collects the garbage of the last jobs, so both runs end on the same heap.
class CollectJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    GC.start
    Sidekiq.redis { |r| r.incr("trimalloc:done") }
  end
end

# Stores Trimalloc.stats (JSON) in redis, for the test to read.
class StatsJob
  include Sidekiq::Worker
  sidekiq_options retry: false

  def perform
    require "trimalloc"
    require "json"
    Sidekiq.redis { |r| r.set("trimalloc:stats", JSON.generate(Trimalloc.stats.merge(rss: Trimalloc.rss))) }
    Sidekiq.redis { |r| r.incr("trimalloc:done") }
  end
end
