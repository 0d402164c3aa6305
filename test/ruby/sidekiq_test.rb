# frozen_string_literal: true

require_relative "test_helper"
require "redis"
require "securerandom"

# Trimalloc::Sidekiq against a real Sidekiq 6 server and a real redis-server.
class SidekiqTest < Minitest::Test
  include TrimallocTest

  # The core's own return of idle memory (its background purger, its delayed
  # purge) is held off, so that what returns the memory here is the hook.
  HOLD = { "TRIMALLOC_BACKGROUND" => "0", "TRIMALLOC_PURGE_DELAY_MS" => "600000" }.freeze

  SIDEKIQ = Gem.bin_path("sidekiq", "sidekiq")
  JOBS = 12
  MB_PER_JOB = 30

  def push(redis, klass, args)
    job = { "class" => klass, "args" => args, "queue" => "default", "retry" => false,
            "jid" => SecureRandom.hex(12), "created_at" => Time.now.to_f, "enqueued_at" => Time.now.to_f }
    redis.sadd?("queues", "default")
    redis.lpush("queue:default", JSON.generate(job))
  end

  def wait_done(redis, n, pid)
    Timeout.timeout(120) do
      until redis.get("trimalloc:done").to_i >= n
        flunk "sidekiq (pid #{pid}) exited" if Process.waitpid(pid, Process::WNOHANG)
        sleep 0.05
      end
    end
  end

  # RSS of the Sidekiq process once its jobs are done (12 jobs on 3 threads,
  # each allocating and dropping 30 MB, then one GC job), and its
  # Trimalloc.stats read after that.
  def sidekiq_run(trim:, preload: false)
    with_redis do |url|
      redis = Redis.new(url: url)
      env = child_env(preload: preload, env: { "REDIS_URL" => url, "TRIM" => trim ? "1" : "0" }.merge(HOLD))
      pid = Process.spawn(env, RUBY, SIDEKIQ, "-r", File.join(SUPPORT, "sidekiq_app.rb"),
                          "-c", "3", "-q", "default", "-t", "2", out: File::NULL, err: File::NULL)
      begin
        JOBS.times { push(redis, "HeavyJob", [MB_PER_JOB]) }
        wait_done(redis, JOBS, pid)
        push(redis, "CollectJob", [])
        wait_done(redis, JOBS + 1, pid)
        sleep 0.5 # the middleware trims right after the job's last line
        rss = rss_of(pid)
        push(redis, "StatsJob", [])
        wait_done(redis, JOBS + 2, pid)
        [rss, JSON.parse(redis.get("trimalloc:stats"), symbolize_names: true)]
      ensure
        stop_process(pid)
        redis.close
      end
    end
  end

  def test_sidekiq_middleware_lowers_rss_after_jobs
    without, without_stats = sidekiq_run(trim: false)
    with, with_stats = sidekiq_run(trim: true)
    msg = "RSS after the jobs: #{with >> 20} MiB with the middleware, #{without >> 20} MiB without"
    warn msg if ENV["TRIMALLOC_TEST_VERBOSE"]
    assert_equal "glibc", with_stats[:backend]
    assert_equal 0, without_stats[:trims]
    # min_interval: 0, so a trim after each job, except where jobs on other
    # threads ended during a trim (those skip: one trim at a time).
    assert_includes 3..(JOBS + 1), with_stats[:trims]
    assert_operator without - with, :>=, 40 * MiB, msg
    assert_operator with, :<=, without * 0.6, msg
  end

  def test_sidekiq_middleware_lowers_rss_after_jobs_under_preload
    without, = sidekiq_run(trim: false, preload: true)
    with, with_stats = sidekiq_run(trim: true, preload: true)
    msg = "RSS after the jobs under trimalloc: #{with >> 20} MiB with the middleware, #{without >> 20} MiB without"
    warn msg if ENV["TRIMALLOC_TEST_VERBOSE"]
    assert_equal "trimalloc", with_stats[:backend]
    assert_includes 3..(JOBS + 1), with_stats[:trims]
    assert_operator with_stats[:trimmed_bytes], :>=, 50 * MiB
    assert_operator without - with, :>=, 10 * MiB, msg
  end
end
