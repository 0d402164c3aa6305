# frozen_string_literal: true

require_relative "test_helper"
require "net/http"

# The Puma plugin (plugin :trimalloc) against a real Puma 5 server.
class PumaTest < Minitest::Test
  include TrimallocTest

  # The core's own return of idle memory (its background purger, its delayed
  # purge) is held off, so that what returns the memory here is the hook.
  HOLD = { "TRIMALLOC_BACKGROUND" => "0", "TRIMALLOC_PURGE_DELAY_MS" => "600000" }.freeze

  PUMA = Gem.bin_path("puma", "puma")

  # Serves 10 requests that each allocate and drop 30 MB (two at a time, on
  # Puma's two threads; with the plugin, a trim after each pair), then one
  # that runs the GC; returns Puma's RSS and the trims counted in its
  # Trimalloc.stats.
  def puma_run(trim:, preload: false)
    port = free_port
    env = child_env(preload: preload, env: { "PORT" => port.to_s, "TRIM" => trim ? "1" : "0" }.merge(HOLD))
    pid = spawn_server(env, RUBY, PUMA, "-C", File.join(SUPPORT, "puma_config.rb"), log: File::NULL)
    wait_for_port(port, pid)
    http = ->(path) { Net::HTTP.get_response(URI("http://127.0.0.1:#{port}#{path}")) }
    stats = -> { JSON.parse(http.call("/stats").body, symbolize_names: true) }
    trims = ->(s) { (s[:plugin] || {})[:trims].to_i }
    # The plugin trims out of band: Puma calls it when a thread finishes a
    # request and finds every thread idle. On a loaded machine the next
    # round's requests can arrive before the threads of the last one are both
    # idle, and Puma calls no hook between them (a CI run saw 1 trim in all).
    # So each round waits for a trim after it (the /stats polls' own idle
    # moments count too): the order is fixed, not the speed.
    5.times do |round|
      before = trim ? trims.call(stats.call) : 0
      2.times.map { Thread.new { assert_equal "200", http.call("/alloc?30").code } }.each(&:join)
      wait_until("the plugin's trim after round #{round + 1}") { trims.call(stats.call) > before } if trim
    end
    gc = JSON.parse(http.call("/gc").body, symbolize_names: true)
    # With the plugin, wait for a trim that came after the GC's.
    wait_until("the plugin's trim after the GC") { trims.call(stats.call) > trims.call(gc) } if trim
    rss = rss_of(pid)
    [rss, stats.call]
  ensure
    stop_group(pid)
  end

  # Steady load: one of Puma's two threads is always busy, so Puma never
  # finds every thread idle and never calls the out-of-band hook. After a
  # burst (80 MB allocated and dropped, then a GC), the free memory passes
  # min_free (32 MiB) and the plugin's watch trims within min_interval (1 s):
  # the RSS falls while the other request is still running.
  def test_puma_plugin_trims_under_steady_load
    port = free_port
    env = child_env(preload: true, env: { "PORT" => port.to_s, "TRIM" => "watch" }.merge(HOLD))
    pid = spawn_server(env, RUBY, PUMA, "-C", File.join(SUPPORT, "puma_config.rb"), log: File::NULL)
    wait_for_port(port, pid)
    http = ->(path) { Net::HTTP.get_response(URI("http://127.0.0.1:#{port}#{path}")) }
    stats = -> { JSON.parse(http.call("/stats").body, symbolize_names: true) }
    require "openssl" # what Net::HTTP loads on a failed connection: not in a thread killed at the end
    hold = Thread.new { http.call("/hold?60") rescue nil } # rubocop:disable Style/RescueModifier
    hold.report_on_exception = false
    # the held request inside the app before anything is counted: until then
    # both of Puma's threads may be idle at once, and Puma may call the
    # out-of-band hook (a loaded machine did, once, between the thread's start
    # and its request)
    before = wait_until("the watch to start and the request to be held") do
      s = stats.call
      s if s[:watch] && s[:held] == 1
    end
    assert_equal "trimalloc", before[:backend]
    assert_equal 0, before[:watch][:trims], "nothing to trim yet: #{before[:watch]}"
    assert_equal "200", http.call("/alloc?80").code
    http.call("/gc")
    peak = rss_of(pid)
    after = wait_until("the watch's trim under load (#{rss_of(pid) >> 20} MiB, peak #{peak >> 20} MiB)",
                       timeout: 30) do
      s = stats.call
      s if s[:watch][:trims] >= 1 && peak - rss_of(pid) >= 50 * MiB
    end
    assert hold.alive?, "the held request was still running"
    assert_operator after[:watch][:trims], :>=, 1, after[:watch].to_s
    assert_operator after[:watch][:trimmed_bytes], :>=, 50 * MiB
    assert_equal (before[:plugin] || {})[:events].to_i, (after[:plugin] || {})[:events].to_i,
                 "Puma never called the out-of-band hook while the request was held"
  ensure
    stop_group(pid, grace: 2) # Puma would wait for the held request
    hold&.kill
  end

  def test_puma_plugin_trims_out_of_band
    without, without_stats = puma_run(trim: false)
    with, with_stats = puma_run(trim: true)
    msg = "Puma RSS after the requests: #{with >> 20} MiB with the plugin, #{without >> 20} MiB without"
    warn msg if ENV["TRIMALLOC_TEST_VERBOSE"]
    assert_equal 0, without_stats[:trims]
    assert_operator with_stats[:trims], :>=, 2, "trims happened when Puma was idle"
    assert_operator with_stats[:trimmed_bytes], :>=, 40 * MiB
    assert_operator without - with, :>=, 40 * MiB, msg
    assert_operator with, :<=, without * 0.6, msg
  end

  def test_puma_plugin_trims_out_of_band_under_preload
    without, = puma_run(trim: false, preload: true)
    with, with_stats = puma_run(trim: true, preload: true)
    msg = "Puma RSS under trimalloc: #{with >> 20} MiB with the plugin, #{without >> 20} MiB without"
    warn msg if ENV["TRIMALLOC_TEST_VERBOSE"]
    assert_equal "trimalloc", with_stats[:backend]
    assert_operator with_stats[:trims], :>=, 2
    assert_operator without - with, :>=, 20 * MiB, msg
    assert_operator with, :<=, without * 0.8, msg
  end
end
