# frozen_string_literal: true

require_relative "test_helper"

# Trimalloc.report: Ruby's heap, the allocator and the kernel side by side.
class ReportTest < Minitest::Test
  include TrimallocTest

  REPORT = <<~RUBY
    require "trimalloc"
    keep = Array.new(20_000) { "z" * 500 }
    r = Trimalloc.report
    puts r.to_s.inspect
    puts JSON.generate(r)
  RUBY

  def report(preload)
    out, err, st = run_ruby("require 'json'\n#{REPORT}", preload: preload)
    assert st.success?, err
    text, json = out.lines
    [JSON.parse(json, symbolize_names: true), text.chomp.undump]
  end

  def check_levels(r, text)
    assert_equal %i[backend ruby allocator kernel], r.keys
    ruby = r[:ruby]
    assert_operator ruby[:memsize_of_all], :>=, 20_000 * 500
    assert_equal ruby[:free_slots] * ruby[:slot_size], ruby[:free_slot_bytes]
    assert_operator ruby[:slot_size], :>=, 40
    assert_operator r[:allocator][:allocated], :>=, 20_000 * 500
    assert_operator r[:kernel][:rss], :>, r[:allocator][:allocated] / 2
    assert_match(/^trimalloc report \(backend: #{r[:backend]}\)$/, text)
    assert_match(/^  ruby heap   objects \d+\.\d MiB \(ObjectSpace.memsize_of_all\), free slots /, text)
    assert_match(/^  kernel      rss \d+\.\d MiB$/, text)
  end

  def test_report_shows_three_levels
    r, text = report(false)
    check_levels(r, text)
    assert_equal "glibc", r[:backend]
    assert_nil r[:allocator][:resident], "glibc cannot say what is resident"
    assert_match(/resident n\/a, fragmentation n\/a/, text)
  end

  def test_report_shows_three_levels_under_preload
    r, text = report(true)
    check_levels(r, text)
    a = r[:allocator]
    assert_equal "trimalloc", r[:backend]
    assert_operator a[:resident], :>=, a[:allocated]
    assert_in_delta 1.0 - a[:allocated].fdiv(a[:resident]), a[:fragmentation], 0.05
    # free: the core's `dirty` (free and still resident) when it has one,
    # else resident - allocated
    assert_operator a[:free], :<=, a[:resident]
    assert_match(/fragmentation \d+\.\d%/, text)
  end

  def test_report_is_a_hash_with_readable_to_s
    r = Trimalloc.report
    assert_kind_of Hash, r
    assert_operator r.to_s.lines.size, :==, 4
    assert_equal "1.5 MiB", Trimalloc::Report.bytes(3 << 19)
    assert_equal "512 B", Trimalloc::Report.bytes(512)
    assert_equal "n/a", Trimalloc::Report.bytes(nil)
  end

  # `require "trimalloc"` goes first in config/puma.rb, Sidekiq's initializer and
  # `trimalloc run`'s children: it loads no library that only report (objspace)
  # and Profile.top (tmpdir, which loads fileutils and etc) use, 600 KiB of
  # RSS in each process; those two load what they use, and still work.
  def test_require_loads_only_what_every_process_needs
    out, err, st = run_ruby(<<~RUBY)
      before = $LOADED_FEATURES.dup
      require "trimalloc"
      puts ($LOADED_FEATURES - before).map { |f| File.basename(f, ".*") }.join(" ")
      puts Trimalloc.report.to_s.lines.size
    RUBY
    assert st.success?, err
    loaded, lines = out.lines
    assert_includes loaded.split, "trimalloc_ext"
    assert_empty loaded.split & %w[objspace tmpdir fileutils etc], loaded
    assert_equal "4", lines.chomp
  end
end
