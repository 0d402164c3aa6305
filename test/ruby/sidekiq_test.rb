# frozen_string_literal: true

require_relative "test_helper"
require "redis"
require "securerandom"
require "trimalloc/sidekiq"

# Trimalloc::Sidekiq against a real Sidekiq 6 server and a real redis-server
# (started by the test on a free loopback port, no persistence). The app is
# support/sidekiq_app.rb; a job counts as done once the middleware after it
# has run (its DoneCounter), so nothing here waits a fixed time. The same
# behaviour names as test/python/test_celery.py.
class SidekiqTest < Minitest::Test
  include TrimallocTest

  # The core's own return of idle memory (its background purger, its delayed
  # purge) is held off, so that what returns the memory here is the hook.
  HOLD = { "TRIMALLOC_BACKGROUND" => "0", "TRIMALLOC_PURGE_DELAY_MS" => "600000" }.freeze

  SIDEKIQ = Gem.bin_path("sidekiq", "sidekiq")
  JOBS = 12
  MB_PER_JOB = 30
  BURST_MB = 100

  def push(redis, klass, args)
    job = { "class" => klass, "args" => args, "queue" => "default", "retry" => false,
            "jid" => SecureRandom.hex(12), "created_at" => Time.now.to_f, "enqueued_at" => Time.now.to_f }
    redis.sadd?("queues", "default")
    redis.lpush("queue:default", JSON.generate(job))
  end

  def wait_done(redis, n, pid, log)
    wait_until("#{n} jobs done", timeout: 120) do
      flunk "sidekiq (pid #{pid}) exited:\n#{File.read(log)}" if zombie_or_gone?(pid)
      redis.get("trimalloc:done").to_i >= n
    end
  end

  # Starts Sidekiq (-c concurrency) on its own redis-server; yields its pid,
  # a redis client, a job runner (push, then wait until done) and the log.
  # trim: true: the middleware with a trim after every job, unpriced;
  # :defaults: the middleware at its defaults; false: none.
  def with_sidekiq(trim:, preload: false, launcher: false, preload_in: nil, concurrency: 3, env: {})
    trim = { true => "1", false => "0", defaults: "defaults" }.fetch(trim)
    with_redis do |url|
      Dir.mktmpdir("trimalloc-sidekiq") do |dir|
        redis = Redis.new(url: url)
        log = File.join(dir, "sidekiq.log")
        env = child_env(preload: preload, env: HOLD.merge("REDIS_URL" => url, "TRIM" => trim,
                                                          "PRELOAD_IN" => preload_in.to_s).merge(env))
        cmd = [RUBY, SIDEKIQ, "-r", File.join(SUPPORT, "sidekiq_app.rb"), "-c", concurrency.to_s,
               "-q", "default", "-t", "1"]
        cmd = [RUBY, EXE, "run", "--", *cmd] if launcher
        pid = spawn_server(env, *cmd, log: log)
        done = 0
        run = lambda do |jobs|
          jobs.each { |klass, args| push(redis, klass, args) }
          done += jobs.size
          wait_done(redis, done, pid, log)
        end
        yield pid, redis, run, log
      ensure
        stop_group(pid)
        redis&.close
      end
    end
  end

  def stats_of(redis, run)
    run.call([["StatsJob", []]])
    JSON.parse(redis.get("trimalloc:stats"), symbolize_names: true)
  end

  # RSS of the Sidekiq process once its jobs are done (12 jobs on 3 threads,
  # each allocating and dropping 30 MB, then one GC job), and its
  # Trimalloc.stats read after that.
  def sidekiq_run(trim:, preload: false)
    with_sidekiq(trim: trim, preload: preload) do |pid, redis, run, _log|
      run.call(Array.new(JOBS) { ["HeavyJob", [MB_PER_JOB]] })
      run.call([["CollectJob", []]]) # done once the middleware's trim after it returned
      rss = rss_of(pid)
      [rss, stats_of(redis, run)]
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

  # What the launcher and preload tests check: the server runs on trimalloc
  # (in the process the test started: no second server), the middleware's
  # trim after a 100 MiB burst returns it, and the RSS falls well below the
  # peak.
  def check_burst(pid, redis, run, log)
    before = stats_of(redis, run)
    assert_equal pid, before[:pid], "the jobs ran in the process started (no second server)"
    assert before[:active], "on trimalloc: #{before}"
    assert_equal "trimalloc", before[:backend]
    assert_equal File.basename(RUBY)[0, 15], before[:comm], "the process kept its name"
    assert_empty children_of(pid)

    run.call([["BurstJob", [BURST_MB]]])
    at_end = redis.get("trimalloc:burst").to_i
    assert_operator at_end - before[:rss], :>=, 70 * MiB, "the burst was resident at the job's end"
    wait_until("the RSS to fall after the burst (#{proc_status(pid)})") do
      s = proc_status(pid)
      s[:hwm] - s[:rss] >= 60 * MiB
    end
    after = stats_of(redis, run)
    hook = after[:hook].first
    refute_nil hook, "the middleware ran"
    assert_operator hook[:trims], :>=, 1 + before[:hook].first[:trims], hook.to_s
    assert_operator hook[:trimmed_bytes] - before[:hook].first[:trimmed_bytes], :>=, 60 * MiB,
                    "the middleware's trim returned the burst"
    assert_operator after[:trims], :>=, hook[:trims]
    refute_match(/trimalloc: preload:/, File.read(log))
  end

  def test_sidekiq_on_the_launcher_runs_on_trimalloc_and_trims_after_a_burst
    with_sidekiq(trim: true, launcher: true, concurrency: 2) do |pid, redis, run, log|
      check_burst(pid, redis, run, log)
    end
  end

  def test_sidekiq_with_the_preload_line_in_its_required_file_runs_on_trimalloc_and_trims_after_a_burst
    with_sidekiq(trim: true, preload_in: "sidekiq_app.rb", concurrency: 2) do |pid, redis, run, log|
      check_burst(pid, redis, run, log)
    end
  end

  # The middleware as the README writes it, at the job hooks' defaults: the
  # refault budget (refault_share 0.1) holds the trim after a 100 MiB burst
  # back (a fault cost 24-31 us here, fault_ns: 25,600 pages are far
  # more than a tenth of the CPU the server has spent), and the server still
  # gives the burst back once it idles (no job for 1 s), with no job and no
  # purger (held off). As test_celery.py's default-budget case.
  def test_sidekiq_with_the_default_refault_budget_returns_a_burst_once_the_server_idles
    with_sidekiq(trim: :defaults, preload: true, concurrency: 2) do |pid, redis, run, _log|
      before = stats_of(redis, run)
      assert_equal "trimalloc", before[:backend]
      hook0 = before[:hook].first
      refute_nil hook0, "the middleware ran"
      assert_operator Trimalloc::Sidekiq::DEFAULTS[:refault_share], :>, 0
      assert_equal Trimalloc::Sidekiq::DEFAULTS[:refault_share], hook0[:refault_share]
      # past min_interval after the stats job's trim: the burst's trim is the
      # budget's to hold back, not the rate limit's (whose deferred trim the
      # budget would price on the policy's thread, not in the hook)
      sleep Trimalloc::Sidekiq::DEFAULTS[:min_interval] + 0.2

      run.call([["BurstJob", [BURST_MB]]])
      at_end = redis.get("trimalloc:burst").to_i
      assert_operator at_end - before[:rss], :>=, 70 * MiB, "the burst was resident at the job's end"
      wait_until("the RSS to fall once the server idles (#{proc_status(pid)})", timeout: 20) do
        s = proc_status(pid)
        s[:hwm] - s[:rss] >= 60 * MiB
      end
      # the idle trim may still be running (and not yet counted) when the
      # RSS has fallen: asked again
      after = wait_until("the idle trim to count the burst", timeout: 10, step: 0.2) do
        a = stats_of(redis, run)
        a if a[:policy][:idle_trims] > before[:policy][:idle_trims] &&
             a[:trimmed_bytes] - before[:trimmed_bytes] >= 60 * MiB
      end
      hook = after[:hook].first
      msg = "hook #{hook}, policy #{after[:policy]}"
      warn "refault budget: #{msg}" if ENV["TRIMALLOC_TEST_VERBOSE"]
      assert_operator hook[:refault_skips] - hook0[:refault_skips], :>=, 1, "the budget held the trim back: #{msg}"
    end
  end

  # The middleware makes the job's class the thread's profiler tag: a real
  # job's samples (sampling on from the start, TRIMALLOC_PROF=1) carry it as
  # their "tag" label, with the job's perform as their Ruby caller; the job
  # that reads the profile carries its own.
  def test_sidekiq_job_samples_carry_the_job_class_as_their_tag
    with_sidekiq(trim: true, preload: true, concurrency: 2,
                 env: { "TRIMALLOC_PROF" => "1", "TRIMALLOC_PROF_INTERVAL" => "262144" }) do |_pid, redis, run, _log|
      run.call([["ProfileJob", [8]]])
      run.call([["ProfileTopJob", []]])
      rows = JSON.parse(redis.get("trimalloc:profile"), symbolize_names: true)
      job = rows.select { |r| r[:frames].any? { |f| f.start_with?("ProfileJob#perform") } }
      refute_empty job, "ProfileJob#perform in the profile: #{rows.first(3)}"
      job.each { |r| assert_equal "ProfileJob", r[:tag], r[:frames].inspect }
      assert_equal 8, job.sum { |r| r[:inuse_objects] }, "8 strings of 2 MB, recorded exactly"
      top_job = rows.select { |r| r[:frames].any? { |f| f.start_with?("ProfileTopJob#perform") } }
      top_job.each { |r| assert_equal "ProfileTopJob", r[:tag] }
      untagged = rows.reject { |r| r[:tag] }
      assert untagged.none? { |r| r[:frames].any? { |f| f.start_with?("ProfileJob#perform") } }
    end
  end
end
