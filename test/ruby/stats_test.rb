# frozen_string_literal: true

require_relative "test_helper"

# Trimalloc.stats: keys from the core's field list, nothing invented.
class StatsTest < Minitest::Test
  include TrimallocTest

  STATS = <<~RUBY
    require "trimalloc"
    keep = Array.new(10_000) { "y" * 200 }
    puts JSON.generate(Trimalloc.stats)
  RUBY

  def test_field_list_parses_from_core_header
    names = TrimallocTest.core_field_names
    assert_operator names.size, :>=, 10
    %i[allocated resident fragmentation trims trimmed_bytes].each { |n| assert_includes names, n }
    assert_equal names.uniq, names
  end

  def test_stats_keys_equal_core_field_list
    s = ruby_json(STATS, preload: true)
    assert_equal TrimallocTest.core_field_names + [:backend], s.keys
    assert_equal "trimalloc", s[:backend]
    assert_operator s[:allocated], :>=, 10_000 * 200
    assert_operator s[:resident], :>=, s[:allocated]
    assert_operator s[:fragmentation], :>=, 0.0
    assert_operator s[:fragmentation], :<, 1.0
    assert_in_delta 1.0 - s[:allocated].fdiv(s[:resident]), s[:fragmentation], 0.05
    (s.keys - %i[backend fragmentation]).each { |k| assert_kind_of Integer, s[k], k }
  end

  def test_stats_on_glibc_leave_unmeasured_fields_out
    s = ruby_json(STATS)
    assert_equal "glibc", s[:backend]
    keys = s.keys - [:backend]
    assert_empty keys - TrimallocTest.core_field_names, "only core field names"
    # mallinfo2 measures these; it cannot know what is resident.
    %i[allocated mapped trims trimmed_bytes trim_ns].each { |k| assert_includes keys, k }
    %i[resident fragmentation purged].each { |k| refute_includes keys, k }
    assert_operator s[:allocated], :>=, 10_000 * 200
  end

  def test_stats_count_trims
    before = Trimalloc.stats
    3.times { Trimalloc.trim }
    after = Trimalloc.stats
    assert_equal before[:trims] + 3, after[:trims]
    assert_operator after[:trim_ns], :>, before[:trim_ns]
  end

  def test_stats_keys_are_symbols_and_backend_is_last
    s = Trimalloc.stats
    assert s.keys.all?(Symbol)
    assert_equal :backend, s.keys.last
    assert_equal Trimalloc.backend, s[:backend]
  end
end
