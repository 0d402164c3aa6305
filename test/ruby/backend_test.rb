# frozen_string_literal: true

require_relative "test_helper"

# Which allocator answers, trimming it, and argument checking.
class BackendTest < Minitest::Test
  include TrimallocTest

  PROBE = <<~RUBY
    require "trimalloc"
    puts JSON.generate(active: Trimalloc.active?, backend: Trimalloc.backend,
                       core_version: Trimalloc.core_version, loaded_path: Trimalloc.loaded_path)
  RUBY

  def test_backend_is_glibc_without_preload
    r = ruby_json(PROBE)
    assert_equal({ active: false, backend: "glibc", core_version: nil, loaded_path: nil }, r)
  end

  def test_backend_is_trimalloc_under_preload
    r = ruby_json(PROBE, preload: true)
    assert_equal true, r[:active]
    assert_equal "trimalloc", r[:backend]
    assert_equal Trimalloc::VERSION, r[:core_version]
    assert_equal File.realpath(library), r[:loaded_path]
  end

  def test_version_is_the_core_headers # read from it (version.rb), not a copy
    header = File.read(File.join(ROOT, "core", "trimalloc.h"))
    assert_equal header[/#define TRIMALLOC_VERSION "([^"]+)"/, 1], Trimalloc::VERSION
    assert_equal Trimalloc::VERSION, Trimalloc.version
  end

  def test_library_path_points_to_bundled_library
    lib = library
    assert_equal "libtrimalloc.so", File.basename(lib)
    assert File.file?(lib)
    # The preload library exports the allocator and the trimalloc_ API.
    syms = `nm -D --defined-only #{lib}`
    %w[malloc free trimalloc_trim trimalloc_stats].each { |s| assert_match(/ T #{s}$/, syms) }
  end

  # A burst of 1 KB strings with every 1024th kept alive: after the GC, freed
  # memory sits between live blocks, where neither allocator returns it
  # unasked. The trim must report (and cause) a drop of most of it.
  BURST = <<~RUBY
    require "trimalloc"
    GC.start
    keep = []
    junk = Array.new(80_000) { |i| s = "x" * 1000; keep << s if i % 1024 == 0; s }
    junk = nil
    GC.start
    before = Trimalloc.rss
    released = Trimalloc.trim
    after = Trimalloc.rss
    puts JSON.generate(released: released, drop: before - after, again: Trimalloc.trim,
                       stats: Trimalloc.stats)
  RUBY

  # (The core's own delayed purge is held off, so the trim is what returns it.)
  def check_trim_returns_bytes(preload)
    r = ruby_json(BURST, preload: preload, env: { "TRIMALLOC_PURGE_DELAY_MS" => "600000" })
    assert_kind_of Integer, r[:released]
    assert_operator r[:released], :>=, 40 * MiB, r.inspect
    assert_operator r[:drop], :>=, 40 * MiB, r.inspect
    assert_operator r[:again], :<, 1 * MiB, "a second trim has little left: #{r.inspect}"
    assert_operator r[:stats][:trims], :>=, 2
    assert_operator r[:stats][:trimmed_bytes], :>=, r[:released]
  end

  def test_trim_returns_bytes
    check_trim_returns_bytes(false)
  end

  def test_trim_returns_bytes_under_preload
    check_trim_returns_bytes(true)
  end

  def test_trim_if_due_is_rate_limited
    r = ruby_json(<<~RUBY)
      require "trimalloc"
      first = Trimalloc.trim_if_due(min_interval: 3600)
      second = Trimalloc.trim_if_due(min_interval: 3600)
      third = Trimalloc.trim_if_due(min_interval: 0)
      huge = Trimalloc.trim_if_due(min_interval: 0, min_free: 1 << 60)
      puts JSON.generate([first, second, third, huge])
    RUBY
    first, second, third, huge = r
    assert_kind_of Integer, first
    assert_nil second, "within min_interval of the last trim"
    assert_kind_of Integer, third
    assert_nil huge, "less free memory than min_free"
  end

  # A hook's trim skipped by min_interval must not leave an idle worker
  # holding its last job's memory: it runs when due, on its own. The test
  # moves the binding's clock instead of sleeping, so it does not depend on
  # how fast the machine is: the skip is certain (an hour's interval), and the
  # deferred trim is waited for with a generous deadline.
  def check_skipped_trim_runs_when_due(preload)
    r = ruby_json(<<~RUBY, preload: preload, env: { "TRIMALLOC_PURGE_DELAY_MS" => "600000" })
      require "trimalloc"
      Trimalloc.trim_if_due(min_interval: 0) # the last trim: now
      base = Trimalloc.rss
      a = Array.new(100_000) { |i| "x" * (500 + i % 1000) }
      a = nil
      GC.start
      held = Trimalloc.rss
      t0 = Trimalloc.stats[:trims]
      skipped = Trimalloc.trim_if_due(min_interval: 3600) # too soon: skipped ...
      skipped_trims = Trimalloc.stats[:trims] - t0
      Trimalloc.send(:advance_clock, 3600) # ... an hour passes ...
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
      sleep 0.01 while Trimalloc.stats[:trims] == t0 && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      sleep 0.05 # a second deferred trim would show up here
      puts JSON.generate(base: base, held: held, skipped: skipped, skipped_trims: skipped_trims,
                         after: Trimalloc.rss, trims: Trimalloc.stats[:trims] - t0)
    RUBY
    assert_nil r[:skipped], r.inspect
    assert_equal 0, r[:skipped_trims], r.inspect
    assert_operator r[:held] - r[:base], :>, 64 * MiB, r.inspect
    assert_equal 1, r[:trims], "the deferred trim ran, once: #{r.inspect}"
    assert_operator r[:held] - r[:after], :>, 48 * MiB, r.inspect
  end

  def test_skipped_trim_runs_when_due
    check_skipped_trim_runs_when_due(false)
  end

  def test_skipped_trim_runs_when_due_under_preload
    check_skipped_trim_runs_when_due(true)
  end

  def test_internals_are_private
    # Trimalloc::Native holds the extension's internals (core/bind's facts,
    # the converting C functions, the argument checks): not API.
    e = assert_raises(NameError) { Trimalloc::Native }
    assert_match(/private constant/, e.message)
    assert_raises(NameError) { Trimalloc::LIBRARY_NAME }
    refute_respond_to Trimalloc, :deprecated_option
    refute_respond_to Trimalloc::GC, :gc_enable
    refute_respond_to Trimalloc::Trimmer.new, :setup
    # what stays public: the documented API (trimalloc.rb's header); the
    # profile readers the CLI calls are Native's
    documented = %i[active? backend core_version exec forked_child? free_bytes free_source library_path
                    loaded_path policy_stats preload! report rss stats trim trim_if_due version]
    assert_equal documented.sort, Trimalloc.singleton_methods.sort
  end

  def test_wrong_arguments_raise_type_and_argument_errors
    e = assert_raises(TypeError) { Trimalloc.trim_if_due(min_interval: "1") }
    assert_match(/min_interval.*"1"/, e.message)
    e = assert_raises(ArgumentError) { Trimalloc.trim_if_due(min_interval: -2) }
    assert_match(/min_interval.*-2/, e.message)
    assert_raises(ArgumentError) { Trimalloc.trim_if_due(min_interval: Float::NAN) }
    e = assert_raises(TypeError) { Trimalloc.trim_if_due(min_free: 1.5) }
    assert_match(/min_free.*1\.5/, e.message)
    assert_raises(ArgumentError) { Trimalloc.trim_if_due(min_free: -1) }
    e = assert_raises(ArgumentError) { Trimalloc.trim_if_due(bogus: 1) }
    assert_match(/unknown keyword: :bogus/, e.message)
    assert_raises(ArgumentError) { Trimalloc.trim(1) }
  end

  def test_rss_and_free_bytes_are_measured
    assert_operator Trimalloc.rss, :>, 1 * MiB
    assert_operator Trimalloc.rss, :<, 64 << 30
    assert_kind_of Integer, Trimalloc.free_bytes
  end
end
