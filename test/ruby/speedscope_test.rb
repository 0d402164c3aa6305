# frozen_string_literal: true

require_relative "test_helper"

# speedscope reads a Ruby program's profile (Trimalloc::Profile.dump) as it
# was written: speedscope's own importer on Node (script/check-speedscope)
# against the binding's reader of the same file (the rows `top` gives). The
# sample type it shows, its total, each call stack's weight, the Ruby frames'
# "Class#method" names and files. Skipped (never failed) when node, npm's
# packages or speedscope's source (SPEEDSCOPE_SRC) are not there.
class SpeedscopeTest < Minitest::Test
  include TrimallocTest

  CHECK = File.join(ROOT, "script", "check-speedscope")

  APP = <<~'RUBY'
    module Shop
      class Catalog
        def build_names(n) = Array.new(n) { |i| "product-#{i}-" * 20 }
      end

      class Report
        def render(rows) = JSON.generate(rows.map { |r| { name: r, tags: %w[a b c] } })
      end
    end
    Trimalloc::Profile.start(interval: 64 << 10)
    KEEP = []
    KEEP << Shop::Catalog.new.build_names(50_000)
    KEEP << Shop::Report.new.render(KEEP[0].first(20_000))
    junk = Array.new(8) { "x" * (1 << 20) }
    junk = nil
    GC.start
    Trimalloc::Profile.dump(ARGV[0])
  RUBY

  def speedscope(*files)
    out, err, st = Open3.capture3(CHECK, *files)
    skip err.lines.last.strip if st.exitstatus == 77
    assert st.success?, err
    out.lines.map { |l| JSON.parse(l) }
  end

  # {[names, root first] => weight} from speedscope's export (evented).
  def speedscope_stacks(view)
    names = view["export"]["shared"]["frames"].map { |f| f["name"] }
    prof = view["export"]["profiles"][0]
    out = Hash.new(0)
    stack = []
    at = prof["startValue"]
    prof["events"].each do |e|
      out[stack.dup] += e["at"] - at if e["at"] > at
      at = e["at"]
      e["type"] == "O" ? stack.push(names[e["frame"]]) : assert_equal(names[e["frame"]], stack.pop)
    end
    assert_empty stack
    out
  end

  def test_a_ruby_program_s_profile_reads_in_speedscope_as_it_was_written
    speedscope # the harness, or a skip
    Dir.mktmpdir("trimalloc-speedscope") do |dir|
      script = File.join(dir, "shop.rb")
      path = File.join(dir, "shop.pb.gz")
      File.write(script, "require 'trimalloc'\nrequire 'json'\n#{APP}")
      _, err, st = Open3.capture3(child_env(preload: true), RUBY, script, path)
      assert st.success?, err
      view = speedscope(path).first
      assert_equal ["Importing as protobuf encoded pprof file"], view["log"]
      assert_equal "bytes", view["unit"]

      rows = Trimalloc.const_get(:Native).prof_top(path, "inuse_space", 0)
      inuse = rows.sum { |r| r[:inuse_space] }
      refute_equal rows.sum { |r| r[:alloc_space] }, inuse # the freed junk
      assert_equal inuse, view["total"]
      # rows' frames are leaf first, a Ruby one "Class#method (file:line)"
      ours = Hash.new(0)
      rows.each do |r|
        ours[r[:frames].reverse.map { |f| f.sub(/ \([^()]*:\d+\)\z/, "") }] += r[:inuse_space] if r[:inuse_space].positive?
      end
      assert_equal ours, speedscope_stacks(view)

      frames = view["frames"].to_h { |f| [f["name"], f] }
      { "Shop::Catalog#build_names" => 3, "Shop::Report#render" => 7 }.each do |name, line|
        assert_equal script, frames[name]["file"], name
        assert_equal 2 + line, frames[name]["line"], name # after the two requires
      end
      assert frames["Shop::Catalog#build_names"]["total"] >= 50_000 * 200, frames["Shop::Catalog#build_names"]
      assert_match %r{/json/common\.rb\z}, frames["JSON.generate"]["file"]
    end
  end
end
