# frozen_string_literal: true

require_relative "test_helper"

# Reading stats and trimming in a loop must not grow memory.
class LeakTest < Minitest::Test
  include TrimallocTest

  LOOP = <<~RUBY
    require "trimalloc"
    Trimalloc::GC.enable(major_only: false, min_interval: 0)
    def round(n)
      n.times do
        Trimalloc.stats
        Trimalloc.trim
        Trimalloc.trim_if_due(min_interval: 0)
        Trimalloc.free_bytes
        Trimalloc::GC.stats
        begin
          Trimalloc.trim_if_due(min_interval: -1)
        rescue ArgumentError
        end
      end
      GC.start
      Trimalloc.trim
      Trimalloc.rss
    end
    warm = round(5_000)
    done = round(40_000)
    puts JSON.generate(warm: warm, done: done)
  RUBY

  # A leak of even 16 bytes per call would be 640 KB over 40,000 rounds.
  def check_no_leak(preload)
    r = ruby_json(LOOP, preload: preload)
    assert_operator r[:done] - r[:warm], :<, 512 << 10, r.inspect
  end

  def test_stats_trim_do_not_leak
    check_no_leak(false)
  end

  def test_stats_trim_do_not_leak_under_preload
    check_no_leak(true)
  end
end
