# frozen_string_literal: true

require "rack/body_proxy"
require "trimalloc"

module Trimalloc
  # Rack middleware: once a response body is closed, trims when `every`
  # requests have ended since its last trim, or sooner when the allocator
  # holds at least `min_free` bytes free but resident; never twice within
  # min_interval seconds (process-wide). nil turns `every` or `min_free` off.
  # A trim skipped by the rate limit is tried again after the next request.
  # The policy is Trimalloc::Trimmer (core/bind, shared with the Python
  # package's WSGI middleware): deciding costs a few atomics and a clock read.
  #
  #   use Trimalloc::Rack, every: 100, min_free: 64 << 20, min_interval: 1.0
  class Rack
    DEFAULTS = { every: 100, min_free: 64 << 20, min_interval: 1.0 }.freeze

    attr_reader :trimmer

    def initialize(app, every: DEFAULTS[:every], min_free: DEFAULTS[:min_free],
                   min_interval: DEFAULTS[:min_interval])
      @app = app
      @trimmer = Trimmer.new(every: every, min_free: min_free, min_interval: min_interval)
    end

    def call(env)
      status, headers, body = @app.call(env)
      [status, headers, ::Rack::BodyProxy.new(body) { @trimmer.event }]
    rescue Exception # rubocop:disable Lint/RescueException
      @trimmer.event # the request ended, by raising
      raise
    end

    # {events:, trims:, skipped:, coalesced:, trimmed_bytes:}
    def stats
      @trimmer.stats
    end
  end
end
