# frozen_string_literal: true

require_relative "test_helper"

# A real Puma 5 cluster (2 workers of one thread, support/puma_cluster.rb,
# the app support/probe_app.rb) on loopback with the trimalloc plugin, made to
# run on trimalloc each way the README gives, and once the way it warns
# against. Each test checks that the server came up once (one master, each
# worker booted once, no respawn), what every worker runs on (each answers
# /info, through the probe app's barrier), that the plugin's out-of-band trim
# fires in every worker, and that every worker's RSS falls well below its peak
# after a burst of 100 MiB. The same behaviour names as test/python/
# test_gunicorn.py.
class PumaClusterTest < Minitest::Test
  include TrimallocTest

  # The core's own return of idle memory (its background purger, its delayed
  # purge) is held off: what returns the burst here is the plugin's trim.
  HOLD = { "TRIMALLOC_BACKGROUND" => "0", "TRIMALLOC_PURGE_DELAY_MS" => "600000" }.freeze

  PUMA = Gem.bin_path("puma", "puma")
  WORKERS = 2
  BURST_MB = 100
  BOOTED = /- Worker \d+ \(PID: (\d+)\) booted/.freeze
  WARNING = /^trimalloc: preload: .*$/.freeze

  # Starts the cluster; yields its master's pid, its port and its log (a
  # String read on demand); always stops the whole process group.
  def with_cluster(launcher: false, preload_in: nil, preload_app: true)
    Dir.mktmpdir("trimalloc-puma") do |dir|
      port = free_port
      log = File.join(dir, "puma.log")
      env = child_env(env: HOLD.merge("PORT" => port.to_s, "BARRIER_DIR" => dir,
                                      "PRELOAD_IN" => preload_in.to_s,
                                      "PRELOAD_APP" => preload_app ? "1" : "0"))
      cmd = [RUBY, PUMA, "-C", File.join(SUPPORT, "puma_cluster.rb")]
      cmd = [RUBY, EXE, "run", "--", *cmd] if launcher
      pid = spawn_server(env, *cmd, log: log)
      begin
        read = -> { File.read(log) }
        wait_for_port(port, pid, timeout: 120)
        wait_until("#{WORKERS} workers booted:\n#{read.call}", timeout: 120) do
          read.call.scan(BOOTED).size >= WORKERS
        end
        yield pid, port, read
      ensure
        stop_group(pid)
      end
    end
  end

  # What every test checks; returns the workers' /info answers.
  def check_cluster(master, port, read, backend:)
    workers = read.call.scan(BOOTED).flatten.map(&:to_i).sort
    assert_equal WORKERS, workers.size, read.call
    assert_equal workers, children_of(master), "the workers are the master's children"

    infos = on_each_worker(port, "/info", WORKERS)
    assert_equal workers, infos.map { |i| i[:pid] }.sort, "every worker answered"
    infos.each do |i|
      assert_equal master, i[:ppid]
      assert_equal backend == "trimalloc", i[:active], "worker #{i[:pid]}: #{i}"
      assert_equal backend, i[:backend]
      assert_equal backend, i[:stats][:backend]
    end

    bursts = on_each_worker(port, "/burst?mb=#{BURST_MB}", WORKERS)
    assert_equal workers, bursts.map { |b| b[:pid] }.sort
    bursts.each do |b|
      before = infos.find { |i| i[:pid] == b[:pid] }
      assert_operator b[:rss] - before[:rss], :>=, 70 * MiB, "the burst was resident at its end: #{b}"
    end
    # Puma calls the plugin once the worker's thread is idle, after the
    # response: the RSS falls then, well below the peak.
    workers.each do |w|
      wait_until("worker #{w}'s RSS to fall after the burst (#{proc_status(w)})") do
        s = proc_status(w)
        s[:hwm] - s[:rss] >= 60 * MiB
      end
    end
    after = on_each_worker(port, "/info", WORKERS)
    after.each do |i|
      plugin = i[:plugin]
      refute_nil plugin, "worker #{i[:pid]}: the plugin ran"
      assert_operator plugin[:trims], :>=, 1, "worker #{i[:pid]}: #{plugin}"
      assert_operator plugin[:trimmed_bytes], :>=, 60 * MiB, "worker #{i[:pid]}: the plugin's trim returned the burst"
      assert_operator i[:stats][:trims], :>=, plugin[:trims]
    end

    log = read.call
    assert_equal 1, log.scan(/Puma starting in cluster mode/).size, "one master:\n#{log}"
    assert_equal workers, log.scan(BOOTED).flatten.map(&:to_i).sort, "each worker booted once:\n#{log}"
    refute_match(/Early termination|Terminating timed out worker/, log)
    assert_equal workers, children_of(master), "no worker was replaced"
    infos
  end

  def test_puma_cluster_on_the_launcher_runs_every_worker_on_trimalloc_and_trims_after_a_burst
    with_cluster(launcher: true) do |master, port, read|
      assert maps_trimalloc?(master), "the master runs on trimalloc"
      check_cluster(master, port, read, backend: "trimalloc")
      assert_empty read.call.scan(WARNING)
    end
  end

  def test_puma_cluster_with_the_preload_line_in_its_config_runs_every_worker_on_trimalloc
    with_cluster(preload_in: "puma.rb") do |master, port, read|
      assert maps_trimalloc?(master), "the master re-executed itself on trimalloc"
      check_cluster(master, port, read, backend: "trimalloc")
      assert_empty read.call.scan(WARNING)
    end
  end

  # The preload line in config.ru, without preload_app!: each worker loads it
  # after the fork, where a re-exec would start a second server. Each worker
  # warns once, naming the right place, and serves on glibc; the plugin still
  # trims (malloc_trim).
  def test_puma_cluster_with_the_preload_line_in_the_app_comes_up_once_on_glibc_and_warns_once
    with_cluster(preload_in: "config.ru", preload_app: false) do |master, port, read|
      refute maps_trimalloc?(master)
      check_cluster(master, port, read, backend: "glibc")
      warnings = read.call.scan(WARNING)
      assert_equal WORKERS, warnings.size, "one warning per worker:\n#{read.call}"
      warnings.each do |w|
        assert_match(/fork of one running the same program/, w)
        assert_match(%r{config/puma\.rb, before preload_app!}, w, "names the right place")
        assert_match(/continuing on glibc\z/, w)
      end
    end
  end

  # The preload line in config.ru with preload_app!: the master loads it, but
  # Puma has set the master's process title by then, so its command line can
  # no longer be run again: refused once, in the master; the workers it forks
  # serve on glibc (and do not load config.ru again).
  def test_puma_cluster_with_the_preload_line_in_the_app_and_preload_app_comes_up_once_on_glibc_and_warns_once
    with_cluster(preload_in: "config.ru", preload_app: true) do |master, port, read|
      refute maps_trimalloc?(master)
      check_cluster(master, port, read, backend: "glibc")
      warnings = read.call.scan(WARNING)
      assert_equal 1, warnings.size, "one warning, the master's:\n#{read.call}"
      assert_match(/command line was rewritten/, warnings[0])
      assert_match(%r{config/puma\.rb, before preload_app!}, warnings[0], "names the right place")
    end
  end
end
