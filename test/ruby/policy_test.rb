# frozen_string_literal: true

require_relative "test_helper"
require "etc"
require "trimalloc/rack"
require "trimalloc/sidekiq"

# The trim policy every hook shares (core/bind's trimmer), under the same
# behaviour names as test/python/test_policy.py. Nothing here depends on the
# machine's speed: the rate limit's clock is moved by the test, and the GVL
# tests use a gate the trim waits at.
class PolicyTest < Minitest::Test
  include TrimallocTest

  HOUR = 3600

  def clock(seconds)
    Trimalloc.send(:advance_clock, seconds)
  end

  def wait_for(timeout: 60)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until yield
      flunk "timed out" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.005
    end
  end

  def fresh
    fresh_rate_limit
  end

  def test_trims_every_n_events
    fresh
    t = Trimalloc::Trimmer.new(every: 3, min_free: nil, min_interval: 0)
    got = Array.new(7) { !t.event.nil? }
    assert_equal [false, false, true, false, false, true, false], got
    assert_equal 7, t.stats[:events]
    assert_equal 2, t.stats[:trims]
  end

  def test_min_free_decides
    fresh
    assert Trimalloc::Trimmer.new(every: nil, min_free: 1, min_interval: 0).event
    never = Trimalloc::Trimmer.new(every: nil, min_free: 1 << 60, min_interval: 0)
    assert_equal [nil, nil, nil], Array.new(3) { never.event }
    assert Trimalloc::Trimmer.new(every: nil, min_free: 0, min_interval: 0).event, "a job hook's default"
  end

  def test_skipped_count_trim_is_retried_on_next_event
    fresh
    t = Trimalloc::Trimmer.new(every: 2, min_free: nil, min_interval: HOUR)
    assert Trimalloc.trim_if_due(min_interval: 0), "a trim just ran elsewhere"
    assert_equal [nil, nil, nil], Array.new(3) { t.event }, "due at 2, held by the limit"
    fresh
    assert t.event, "the 4th event: still due, now allowed"
    assert_equal 1, t.stats[:trims]
  end

  def test_rate_limit_is_shared_by_every_hook
    fresh
    a = Trimalloc::Trimmer.new(min_interval: HOUR)
    b = Trimalloc::Trimmer.new(min_interval: HOUR)
    assert a.event
    assert_nil b.event
    assert_nil Trimalloc.trim_if_due(min_interval: HOUR)
    fresh
    assert b.event
  end

  # Arms the gate and starts `trim` in a thread; returns once it waits there.
  def gated_trim_in_thread(&trim)
    Trimalloc.send(:test_gate, true)
    th = Thread.new(&trim)
    wait_for { Trimalloc.send(:test_gate_state) == 2 } # runs only if the trimmer let go of the GVL
    th
  end

  def test_trim_runs_without_the_interpreter_lock
    fresh
    t = Trimalloc::Trimmer.new(min_interval: 0)
    th = gated_trim_in_thread { t.event }
    state = Trimalloc.send(:test_gate_state)
    Trimalloc.send(:test_gate_open)
    released = th.value
    Trimalloc.send(:test_gate, false)
    assert_equal 2, state, "this thread ran while the other one trimmed"
    refute_nil released
  end

  def test_trim_requested_during_a_trim_is_coalesced
    fresh
    t = Trimalloc::Trimmer.new(min_interval: 0)
    other = Trimalloc::Trimmer.new(min_interval: 0)
    before = Trimalloc.policy_stats[:coalesced]
    th = gated_trim_in_thread { t.event }
    assert_nil other.event, "returns at once: folded into the running trim"
    Trimalloc.send(:test_gate_open)
    released = th.value
    Trimalloc.send(:test_gate, false)
    assert_equal 1, other.stats[:coalesced]
    refute_nil released
    assert_equal before + 1, Trimalloc.policy_stats[:coalesced]
  end

  # A worker forked while another thread trims (a Puma or gunicorn master
  # running a hook) must not inherit a trim that will never end there.
  def test_fork_during_a_trim_leaves_the_child_able_to_trim
    fresh
    t = Trimalloc::Trimmer.new(min_interval: 0)
    th = gated_trim_in_thread { t.event }
    assert_equal 2, Trimalloc.send(:test_gate_state), "the parent's trim is running"
    r, w = IO.pipe
    pid = fork do
      r.close
      child = Trimalloc::Trimmer.new(min_interval: 0)
      got = { released: child.event, busy: Trimalloc.policy_stats[:busy], coalesced: child.stats[:coalesced] }
      w.write(Marshal.dump(got))
      w.close
      exit!(0)
    end
    w.close
    got = Marshal.load(r.read)
    Process.wait(pid)
    Trimalloc.send(:test_gate_open)
    th.value
    Trimalloc.send(:test_gate, false)
    refute_nil got[:released], got.inspect
    assert_equal 0, got[:coalesced], got.inspect
    assert_equal false, got[:busy], got.inspect
  end

  def test_free_figure_is_sampled_not_read_per_event
    fresh
    t = Trimalloc::Trimmer.new(every: nil, min_free: 1 << 60, min_interval: 0)
    r0 = Trimalloc.policy_stats[:free_reads]
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond)
    2000.times { t.event }
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) - t0
    reads = Trimalloc.policy_stats[:free_reads] - r0
    assert_includes 1..(elapsed / 10_000_000 + 2), reads, "at most one read per 10 ms (#{elapsed} ns)"
  end

  PAGE = Etc.sysconf(Etc::SC_PAGESIZE)

  # The refault budget's fault cost (ns a page) and a pinned free-bytes
  # figure for the block; the real ones again after it.
  def with_refault(fault_ns, free_bytes)
    refault(fault_ns, free_bytes)
    yield
  ensure
    refault(0, -1)
    fresh
  end

  def refault(fault_ns, free_bytes)
    Trimalloc.send(:test_refault, fault_ns, free_bytes)
  end

  def cpu(seconds)
    Trimalloc.send(:advance_cpu, seconds)
  end

  def test_cheap_faults_let_back_to_back_jobs_each_trim
    fresh
    with_refault(1e-9, 64 << 20) do # 64 MiB free after every job, faults all but free
      t = Trimalloc::Trimmer.new(min_interval: 0, refault_share: 0.1)
      got = Array.new(5) do
        cpu(1e-6) # each job runs (at least) a microsecond
        !t.event.nil?
      end
      assert_equal [true] * 5, got
      assert_equal 5, t.stats[:trims]
      assert_equal 0, t.stats[:refault_skips]
    end
  end

  def test_dear_faults_wait_until_the_job_spent_enough_cpu
    fresh
    # 1000 pages free at 1 ms each: a trim costs 1 s of refaults, so it needs 10 s of CPU
    with_refault(1e6, 1000 * PAGE) do
      t = Trimalloc::Trimmer.new(min_interval: 0, refault_share: 0.1)
      before = Trimalloc.policy_stats[:refault_skips]
      assert t.event, "an hour of CPU since the last trim (fresh)"
      assert_nil t.event, "back to back: held back"
      cpu(5)
      assert_nil t.event, "0.5 s of budget for 1 s of refaults"
      cpu(6)
      assert t.event, "11 s of CPU: 1.1 s of budget"
      assert_equal 2, t.stats[:refault_skips]
      assert_equal 2, t.stats[:trims]
      assert_equal before + 2, Trimalloc.policy_stats[:refault_skips]
      refault(1e6, 0)
      assert t.event, "nothing free: nothing to refault"
    end
  end

  def test_trim_held_back_by_the_budget_runs_when_the_worker_goes_idle
    fresh
    with_refault(1e6, 1000 * PAGE) do
      t = Trimalloc::Trimmer.new(min_interval: 0, refault_share: 0.1)
      assert t.event
      idle = Trimalloc.policy_stats[:idle_trims]
      assert_nil t.event
      assert Trimalloc.policy_stats[:pending]
      clock(2) # no job for 2 s: idle, and an idle worker refaults nothing
      wait_for { Trimalloc.policy_stats[:idle_trims] > idle }
      assert_equal idle + 1, Trimalloc.policy_stats[:idle_trims]
    end
  end

  def test_count_trigger_and_no_share_are_not_priced
    fresh
    with_refault(1e6, 1000 * PAGE) do
      counted = Trimalloc::Trimmer.new(every: 1, min_free: nil, min_interval: 0, refault_share: 0.1)
      plain = Trimalloc::Trimmer.new(min_interval: 0) # refault_share 0: no budget
      assert_equal [true, true] * 2, Array.new(2) { [!counted.event.nil?, !plain.event.nil?] }.flatten
    end
  end

  def test_fault_cost_is_measured
    assert_operator Trimalloc.policy_stats[:fault_ns], :>, 0
  end

  OLD_GLIBC = <<~RUBY
    require "trimalloc"
    t = Trimalloc::Trimmer.new(every: nil, min_free: 1, min_interval: 0)
    puts JSON.generate(source: Trimalloc.free_source, fired: !t.event.nil?)
  RUBY

  def test_hooks_fire_on_old_glibc
    { "1" => "mallinfo", "2" => "unknown" }.each do |old, source|
      r = ruby_json(OLD_GLIBC, env: { "TRIMALLOC_TEST_OLD_GLIBC" => old })
      assert_equal source, r[:source]
      assert r[:fired], "a threshold that cannot be read never silences the hook: #{r}"
    end
  end

  def test_free_figure_is_the_cores_dirty_counter
    want = TrimallocTest.core_field_names.include?(:dirty) ? "dirty" : "resident"
    r = ruby_json('require "trimalloc"; puts JSON.generate(source: Trimalloc.free_source)', preload: true)
    assert_equal want, r[:source]
  end

  def test_defaults_are_core_binds
    # One table, core/bind/bind_facts.c, read by both languages (the Python
    # suite checks its hooks against the same table, _trimalloc.DEFAULTS): a
    # default spelled again in Ruby and changed there fails here.
    d = Trimalloc.const_get(:Native)::DEFAULTS
    assert_equal %i[trimmer gc job request out_of_band].sort, d.keys.sort
    settings = lambda do |t|
      { every: t.every, min_free: t.min_free, min_interval: t.min_interval, refault_share: t.refault_share }
    end
    # the refault budget is the job hooks' default, and no other hook has one unless asked
    assert_equal({ trimmer: 0.0, gc: 0.0, job: 0.1, request: 0.0, out_of_band: 0.0 },
                 d.transform_values { |h| h[:refault_share] })
    assert_equal d[:request], settings.call(Trimalloc::Rack.new(->(_) {}).trimmer)
    assert_equal d[:job], settings.call(Trimalloc::Sidekiq.new.trimmer)
    assert_equal d[:trimmer], settings.call(Trimalloc::Trimmer.new)
    require "puma"
    require "puma/plugin/trimalloc"
    assert_equal d[:out_of_band].merge(watch: true), Trimalloc::Puma::DEFAULTS
    assert_equal d[:out_of_band], settings.call(Trimalloc::Puma.trimmer.tap { Trimalloc::Puma.reset! })
    out, err, st = run_ruby('require "trimalloc"; Trimalloc::GC.enable; print Trimalloc::GC.stats[:min_interval]')
    assert st.success?, err
    assert_equal d[:gc][:min_interval].to_s, out
  end

  def test_counter_names_are_core_binds
    native = Trimalloc.const_get(:Native)
    assert_equal native::TRIMMER_COUNTS, Trimalloc::Trimmer.new(every: 1).stats.keys
    assert_includes native::TRIMMER_COUNTS, :refault_skips
    assert_equal %i[pending busy deferred coalesced free_reads refault_skips idle_trims fault_ns],
                 Trimalloc.policy_stats.keys
    # the preload's results by the names Trimalloc.preload! uses; their numbers
    # are core/bind's (TA_PRELOAD_*), read from there, never spelled
    assert_equal %i[active failed forked guard no_library not_a_file rewritten], native::PRELOAD.keys.sort
    assert_equal native::PRELOAD.size, native::PRELOAD.values.uniq.size
    assert(native::PRELOAD.values.all?(Integer))
  end

  def test_old_option_names_warn_once
    out, err, st = run_ruby(<<~RUBY)
      require "puma"
      require "puma/plugin/trimalloc"
      Trimalloc::PUMA_OPTIONS[:min_interval] = 7.0
      t = Trimalloc::Puma.trimmer({ min_free: 5 })
      Trimalloc::Puma.reset!
      Trimalloc::Puma.trimmer(nil)
      print t.min_interval, " ", t.min_free
    RUBY
    assert st.success?, err
    assert_equal "7.0 5", out
    assert_equal 1, err.scan(/PUMA_OPTIONS is deprecated, use the `trimalloc` line/).size, err
  end

  def test_wrong_arguments_name_the_value
    e = assert_raises(ArgumentError) { Trimalloc::Trimmer.new(every: nil, min_free: nil) }
    assert_match(/both nil/, e.message)
    assert_raises(ArgumentError) { Trimalloc::Trimmer.new(every: 0) }
    e = assert_raises(TypeError) { Trimalloc::Trimmer.new(every: "3") }
    assert_match(/"3"/, e.message)
    e = assert_raises(ArgumentError) { Trimalloc::Trimmer.new(min_free: -1) }
    assert_match(/-1/, e.message)
    assert_raises(TypeError) { Trimalloc::Trimmer.new(min_free: 1.5) }
    assert_raises(ArgumentError) { Trimalloc::Trimmer.new(min_interval: -2) }
    e = assert_raises(ArgumentError) { Trimalloc::Trimmer.new(refault_share: -0.5) }
    assert_match(/refault_share.*-0.5/, e.message)
    e = assert_raises(ArgumentError) { Trimalloc::Trimmer.new(refault_share: Float::INFINITY) }
    assert_match(/refault_share.*Infinity/, e.message)
    e = assert_raises(TypeError) { Trimalloc::Trimmer.new(refault_share: "lots") }
    assert_match(/refault_share.*"lots"/, e.message)
    e = assert_raises(TypeError) { Trimalloc::Trimmer.new(refault_share: nil) }
    assert_match(/refault_share.*nil/, e.message)
    # Sidekiq takes the job hooks' settings, refault_share among them (Celery's install(refault_share=))
    assert_equal 0.25, Trimalloc::Sidekiq.new(refault_share: 0.25, min_interval: 0.5).trimmer.refault_share
    assert_raises(TypeError) { Trimalloc::Sidekiq.new(refault_share: "lots") }
    assert_raises(ArgumentError) { Trimalloc::Trimmer.new(bogus: 1) }
    assert_raises(ArgumentError) { Trimalloc::Sidekiq.new(bogus: 1) }
  end
end
