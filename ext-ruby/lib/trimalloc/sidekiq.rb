# frozen_string_literal: true

require "trimalloc"

module Trimalloc
  # Sidekiq server middleware: after each job, trim if the last trim is at
  # least min_interval seconds old (process-wide, so many job threads trim at
  # most once per interval) and, when min_free > 0, at least min_free bytes
  # are free but held.
  #
  #   Sidekiq.configure_server do |config|
  #     config.server_middleware { |chain| chain.add Trimalloc::Sidekiq, min_interval: 1.0 }
  #   end
  class Sidekiq
    def initialize(options = {})
      @min_interval = options.fetch(:min_interval, 1.0)
      @min_free = options.fetch(:min_free, 0)
    end

    def call(_worker, _job, _queue)
      yield
    ensure
      Trimalloc.trim_if_due(min_interval: @min_interval, min_free: @min_free)
    end
  end
end
