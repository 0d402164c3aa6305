# frozen_string_literal: true

require_relative "test_helper"
require "minitest/mock"
require "rack"
require "rack/mock"
require "trimalloc/rack"
require "trimalloc/sidekiq"

# Trimalloc::Rack and Trimalloc::Sidekiq tag only while the heap profiler
# samples. This process runs on glibc, where it never does: there a request
# or a job sees no tag; with Profile.interval stubbed to answer "on", the same
# middlewares tag as before. The children (on trimalloc) switch the real
# profiler on and off in the middle of a request or a job.
class TagOffTest < Minitest::Test
  include TrimallocTest

  PR = Trimalloc::Profile

  def seen_by_rack_app
    seen = []
    app = Trimalloc::Rack.new(lambda do |_env|
      seen << PR.tag
      [200, {}, ["ok"]]
    end, every: 1_000_000, min_free: nil)
    assert_equal "ok", Rack::MockRequest.new(app).get("/orders/42?page=2").body
    assert_equal 1, app.stats[:events] # the request still counts
    seen << PR.tag
  end

  def seen_by_sidekiq_job
    seen = []
    Trimalloc::Sidekiq.new(every: 1_000_000, min_free: nil).call(nil, { "class" => "ImportJob" }, "default") do
      seen << PR.tag
    end
    seen << PR.tag
  end

  def test_off_the_rack_middleware_and_sidekiq_set_no_tag
    assert_equal 0, PR.interval
    PR.stub(:tag=, ->(t) { flunk "tag= #{t.inspect} called with the profiler off" }) do
      assert_equal [nil, nil], seen_by_rack_app
      assert_equal [nil, nil], seen_by_sidekiq_job
    end
  end

  def test_on_the_rack_middleware_and_sidekiq_tag_as_before
    PR.stub(:interval, 512 * 1024) do
      assert_equal ["/orders/42", nil], seen_by_rack_app
      assert_equal ["ImportJob", nil], seen_by_sidekiq_job
    end
  ensure
    PR.tag = nil
  end

  def child(code)
    ruby_json(<<~RUBY, preload: true)
      require "rack"
      require "rack/mock"
      require "trimalloc/rack"
      require "trimalloc/sidekiq"
      require "fiddle"
      MALLOC = Fiddle::Function.new(Fiddle::Handle::DEFAULT["malloc"], [Fiddle::TYPE_SIZE_T],
                                    Fiddle::TYPE_VOIDP, need_gvl: true)
      KEEP = []
      PR = Trimalloc::Profile
      def rack(&blk) = Trimalloc::Rack.new(->(env) { blk.call(env); [200, {}, ["ok"]] }, every: 1_000_000, min_free: nil)
      #{code}
    RUBY
  end

  # The rows of blocks of `size` bytes (recorded exactly: above the interval),
  # as profile_test.rb's rows_of.
  def by_size(rows, size)
    rows.select do |r|
      r[:inuse_objects].positive? && (size..size + 4096).cover?(r[:inuse_space] / r[:inuse_objects])
    end
  end

  def test_stopping_the_profiler_mid_request_or_job_leaves_no_tag_behind
    res = child(<<~'RUBY')
      left = {}
      PR.tag = "outer"
      PR.start(interval: 64 * 1024)
      Rack::MockRequest.new(rack { left[:rack_in] = PR.tag; PR.stop }).get("/r")
      left[:rack] = PR.tag
      PR.start(interval: 64 * 1024)
      Trimalloc::Sidekiq.new.call(nil, { "class" => "StopJob" }, "q") { left[:job_in] = PR.tag; PR.stop }
      left[:sidekiq] = PR.tag
      PR.tag = nil
      PR.start(interval: 64 * 1024)
      4.times { KEEP << MALLOC.call(3 << 20) }
      puts JSON.generate(left: left, rows: PR.top(0))
    RUBY
    assert_equal({ rack_in: "/r", rack: "outer", job_in: "StopJob", sidekiq: "outer" }, res[:left])
    after = by_size(res[:rows], 3 << 20)
    assert_equal 4, after.sum { |r| r[:inuse_objects] }
    after.each { |r| assert_nil r[:tag] }
  end

  def test_a_request_or_job_in_flight_when_the_profiler_starts_runs_untagged_and_the_next_is_tagged
    res = child(<<~'RUBY')
      Rack::MockRequest.new(rack do
        PR.start(interval: 64 * 1024)
        4.times { KEEP << MALLOC.call(3 << 20) }
      end).get("/first")
      Rack::MockRequest.new(rack { 4.times { KEEP << MALLOC.call(5 << 20) } }).get("/next")
      PR.stop
      Trimalloc::Sidekiq.new.call(nil, { "class" => "FirstJob" }, "q") do
        PR.start(interval: 64 * 1024)
        4.times { KEEP << MALLOC.call(7 << 20) }
      end
      Trimalloc::Sidekiq.new.call(nil, { "class" => "NextJob" }, "q") { 4.times { KEEP << MALLOC.call(9 << 20) } }
      puts JSON.generate(rows: PR.top(0))
    RUBY
    { 3 => nil, 5 => "/next", 7 => nil, 9 => "NextJob" }.each do |mib, tag|
      rows = by_size(res[:rows], mib << 20)
      assert_equal 4, rows.sum { |r| r[:inuse_objects] }, "#{mib} MiB"
      rows.each { |r| tag ? assert_equal(tag, r[:tag], "#{mib} MiB") : assert_nil(r[:tag], "#{mib} MiB") }
    end
  end
end
