# frozen_string_literal: true

require_relative "test_helper"
require_relative "support/rails_setup"
require "net/http"

# A Rails 6.1 app (support/rails_app: SQLite, ERB pages, a JSON API, a CSV
# export) under `bundle exec puma` (2 workers x 5 threads, preload_app!), set
# up as the README's Rails section says: `gem "trimalloc"` in the Gemfile,
# the preload line first in config/puma.rb, `plugin :trimalloc`, and
# Trimalloc::GC.enable in an initializer. Puma is started the way the
# executable RubyGems writes for `gem install puma` starts it (rbenv, the
# Docker ruby images): Bundler loads it into its own process after rewriting
# $0 and the process title (support/rails_setup.rb). Debian's /usr/bin/puma
# would hide that: Bundler runs it in a new process.
class RailsTest < Minitest::Test
  include TrimallocTest

  WORKERS = 2
  BOOTED = /- Worker \d+ \(PID: (\d+)\) booted/.freeze

  def test_rails_under_bundle_exec_puma_runs_every_worker_on_trimalloc_and_returns_a_burst
    Dir.mktmpdir("trimalloc-rails") do |dir|
      port = free_port
      app, env = RailsSetup.prepare(dir, child_env(env: { "RUBYLIB" => nil, "PORT" => port.to_s }))
      log = File.join(dir, "puma.log")
      pid = Process.spawn(env, "bundle", "exec", "puma", "-C", "config/puma.rb", chdir: app, pgroup: true,
                                                                                 in: File::NULL, out: log, err: %i[child out])
      begin
        read = -> { File.read(log) }
        wait_for_port(port, pid, timeout: 120)
        workers = wait_until("#{WORKERS} workers booted:\n#{read.call}", timeout: 120) do
          w = read.call.scan(BOOTED).flatten.map(&:to_i)
          w.size >= WORKERS && w.sort
        end
        check_trimalloc(pid, workers, read.call)
        check_hooks(port, workers)
        check_burst(port, workers)
        assert_equal workers, children_of(pid), "no worker was replaced:\n#{read.call}"
      ensure
        stop_group(pid)
      end
    end
  end

  # The master re-executed itself once (same pid) on trimalloc, before Puma
  # started; its workers inherited it; nothing warned.
  def check_trimalloc(master, workers, log)
    assert maps_trimalloc?(master), "the master runs on trimalloc:\n#{log}"
    workers.each { |w| assert maps_trimalloc?(w), "worker #{w} runs on trimalloc" }
    assert_equal workers, children_of(master)
    assert_equal 1, log.scan(/Puma starting in cluster mode/).size, log
    assert_empty log.scan(/^trimalloc: .*$/), "no warning"
  end

  # Every worker answers (10 held probes fill both workers' 5 threads):
  # on trimalloc, with the GC hook the master enabled before the fork, and
  # the plugin's watch, which each worker started when it booted.
  def check_hooks(port, workers)
    probes = Array.new(10) { Thread.new { http_json(port, "/probe?hold=1") } }.map(&:value)
    assert_equal workers, probes.map { |r| r[:pid] }.uniq.sort, "both workers answered"
    probes.each do |r|
      assert_equal "trimalloc", r[:backend], r.to_s
      assert r[:gc_hook], "worker #{r[:pid]} kept the GC hook: #{r}"
      refute_nil r[:watch], "worker #{r[:pid]} runs the plugin's watch: #{r}"
    end
  end

  # CSV exports (each a 40 MB string of plucked columns, garbage once sent)
  # until every worker has taken two, among the app's other requests. A
  # long request's buffers are old objects by its end, freed by the next
  # major GC: after a GC.start in every worker (its GC hook trims then),
  # each worker's RSS falls well below its peak.
  def check_burst(port, workers)
    before = workers.to_h { |w| [w, proc_status(w)[:rss]] }
    served = Hash.new(0)
    40.times do |i|
      break if workers.all? { |w| served[w] >= 2 }

      Array.new(4) do
        Thread.new do
          Net::HTTP.start("127.0.0.1", port, read_timeout: 120) { |c| c.get("/export.csv?rounds=50&pluck=1") }
        end
      end.each do |t|
        r = t.value
        assert_equal "200", r.code
        served[r["X-Worker-Pid"].to_i] += 1
      end
      assert_equal 0, RailsSetup.load(port, 20, clients: 4, first: i * 50 + 1)
    end
    assert workers.all? { |w| served[w] >= 2 }, "every worker took a burst: #{served}"
    peaks = workers.to_h { |w| [w, proc_status(w)[:hwm]] }
    gcs = Array.new(10) { Thread.new { http_json(port, "/probe?hold=1&gc=1") } }.map(&:value)
    assert_equal workers, gcs.map { |r| r[:pid] }.uniq.sort
    workers.each do |w|
      grew = peaks[w] - before[w]
      # A 50-round export is ~40 MB (38 MiB); the peak grows by less when the
      # burst reuses pages the worker had free before it (39.6 MiB seen once).
      assert_operator grew, :>=, 32 * MiB, "worker #{w} took the burst"
      # back to within a third of the burst over its RSS before it
      wait_until("worker #{w}'s RSS to fall after the burst (#{proc_status(w)}; before #{before[w]})") do
        proc_status(w)[:rss] - before[w] <= grew / 3
      end
      warn "worker #{w}: #{before[w] >> 20} MiB, peak #{peaks[w] >> 20} MiB, after #{proc_status(w)[:rss] >> 20} MiB" if ENV["TRIMALLOC_TEST_VERBOSE"]
    end
    gcs.group_by { |r| r[:pid] }.each do |w, rs|
      assert_operator rs.map { |r| r[:gc][:trims] }.max, :>=, 1, "worker #{w}'s GC hook trimmed: #{rs.last[:gc]}"
    end
  end
end
