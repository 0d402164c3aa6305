# frozen_string_literal: true

require_relative "test_helper"
require "rack"
require "rack/mock"
require "trimalloc/rack"

# Trimalloc::Rack: trims after responses, every N requests or past a
# free-bytes threshold.
class RackTest < Minitest::Test
  include TrimallocTest

  APP = lambda do |_env|
    junk = Array.new(1000) { "r" * 1000 }
    [200, { "Content-Type" => "text/plain" }, ["#{junk.size}\n"]]
  end

  def trims
    Trimalloc.stats[:trims]
  end

  def get(app, n)
    req = Rack::MockRequest.new(app)
    n.times { assert_equal "1000\n", req.get("/").body }
  end

  def setup
    fresh_rate_limit
  end

  def test_rack_middleware_counts_requests_whose_app_raises
    app = Trimalloc::Rack.new(->(_env) { raise "app failed" }, every: 1, min_free: nil, min_interval: 0)
    assert_raises(RuntimeError) { app.call(Rack::MockRequest.env_for("/")) }
    assert_equal 1, app.stats[:events]
    assert_equal 1, app.stats[:trims]
  end

  def test_rack_middleware_trims_every_n_requests
    app = Trimalloc::Rack.new(APP, every: 3, min_free: nil, min_interval: 0)
    t0 = trims
    get(app, 9)
    assert_equal 3, trims - t0
    get(app, 2)
    assert_equal 3, trims - t0
  end

  def test_rack_middleware_trims_when_free_bytes_pass_threshold
    a = Array.new(20_000) { "f" * 1000 }
    a = nil # rubocop:disable Lint/UselessAssignment
    GC.start
    free = Trimalloc.free_bytes
    assert_operator free, :>, 0
    low = Trimalloc::Rack.new(APP, every: 1000, min_free: 1, min_interval: 0)
    t0 = trims
    get(low, 4)
    assert_equal 4, trims - t0, "free bytes above min_free: every request trims"
    high = Trimalloc::Rack.new(APP, every: 1000, min_free: 1 << 60, min_interval: 0)
    t0 = trims
    get(high, 4)
    assert_equal 0, trims - t0, "free bytes below min_free: no trim"
  end

  def test_rack_middleware_trims_after_the_body_is_closed
    app = Trimalloc::Rack.new(APP, every: 1, min_interval: 0)
    t0 = trims
    status, _headers, body = app.call(Rack::MockRequest.env_for("/"))
    assert_equal 200, status
    assert_equal 0, trims - t0, "not while the response is being sent"
    body.each { |s| assert_equal "1000\n", s }
    body.close
    assert_equal 1, trims - t0
  end

  def test_rack_middleware_is_rate_limited
    app = Trimalloc::Rack.new(APP, every: 1, min_interval: 3600)
    Trimalloc.trim_if_due(min_interval: 0)
    t0 = trims
    get(app, 5)
    assert_equal 0, trims - t0, "a trim just happened: none for an hour"
  end

  def test_rack_middleware_rejects_bad_every
    e = assert_raises(ArgumentError) { Trimalloc::Rack.new(APP, every: 0) }
    assert_match(/every.*0/, e.message)
    assert_raises(TypeError) { Trimalloc::Rack.new(APP, every: "3") }
    e = assert_raises(ArgumentError) { Trimalloc::Rack.new(APP, every: nil, min_free: nil) }
    assert_match(/both nil/, e.message)
  end
end
