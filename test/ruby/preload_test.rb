# frozen_string_literal: true

require_relative "test_helper"

# require "trimalloc/preload": re-exec once with the preload, same pid.
class PreloadTest < Minitest::Test
  include TrimallocTest

  SCRIPT = <<~'RUBY'
    File.open(ENV.fetch("START_LOG"), "a") { |f| f.puts Process.pid }
    require "json"
    require "trimalloc/preload"
    Trimalloc.preload! # a second call changes nothing, warns no more
    puts JSON.generate(pid: Process.pid, backend: Trimalloc.backend, argv: ARGV,
                       guard: ENV["TRIMALLOC_PRELOAD_GUARD"], preload: ENV["LD_PRELOAD"])
  RUBY

  def run_script(env: {}, preload: false)
    Dir.mktmpdir do |dir|
      log = File.join(dir, "starts")
      e = child_env(preload: preload, env: env.merge("START_LOG" => log))
      Open3.popen3(e, RUBY, "-e", SCRIPT, "--", "a b", "c") do |_i, o, err, t|
        out = o.read
        errs = err.read
        st = t.value
        assert st.success?, "#{st.inspect}\n#{errs}"
        starts = File.readlines(log).map(&:to_i)
        return [t.pid, starts, JSON.parse(out.lines.last, symbolize_names: true), errs]
      end
    end
  end

  def test_preload_reexecs_once
    pid, starts, r, err = run_script
    assert_equal [pid, pid], starts, "started twice, in the same process"
    assert_equal pid, r[:pid]
    assert_equal "trimalloc", r[:backend]
    assert_equal ["a b", "c"], r[:argv], "same command line"
    assert_equal "1", r[:guard]
    assert_equal library, r[:preload]
    assert_empty err
  end

  def test_preload_guard_prevents_a_loop_and_warns_once
    pid, starts, r, err = run_script(env: { "TRIMALLOC_PRELOAD_GUARD" => "1" })
    assert_equal [pid], starts, "no re-exec when the guard is set"
    assert_equal "glibc", r[:backend]
    assert_equal 1, err.scan(/trimalloc: preload:/).size, err
    assert_match(/continuing on glibc/, err)
  end

  def test_preload_does_nothing_when_already_active
    pid, starts, r, err = run_script(preload: true)
    assert_equal [pid], starts
    assert_equal "trimalloc", r[:backend]
    assert_nil r[:guard]
    assert_empty err
  end
end
