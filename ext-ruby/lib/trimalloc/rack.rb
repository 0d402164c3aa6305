# frozen_string_literal: true

require "rack/body_proxy"
require "trimalloc"

module Trimalloc
  # Rack middleware: once a response body is closed, trims every `every`
  # requests, or sooner when the allocator holds at least `min_free` free
  # bytes (nil: no threshold); never more often than once per min_interval
  # seconds.
  #
  #   use Trimalloc::Rack, every: 100, min_free: 64 << 20
  class Rack
    def initialize(app, every: 100, min_free: 64 << 20, min_interval: 1.0)
      raise ArgumentError, "every must be a positive Integer (given #{every.inspect})" unless every.is_a?(Integer) && every.positive?

      @app = app
      @every = every
      @min_free = min_free
      @min_interval = min_interval
      @count = 0
      @lock = Mutex.new
    end

    def call(env)
      status, headers, body = @app.call(env)
      [status, headers, ::Rack::BodyProxy.new(body) { after_request }]
    end

    private

    def after_request
      nth = @lock.synchronize { (@count += 1) % @every == 0 }
      if nth
        Trimalloc.trim_if_due(min_interval: @min_interval)
      elsif @min_free
        Trimalloc.trim_if_due(min_interval: @min_interval, min_free: @min_free)
      end
    end
  end
end
