# frozen_string_literal: true

# Puma plugin: trims when every thread of a worker is idle (Puma's
# out_of_band hook), at most once per min_interval seconds and, with
# min_free > 0, only when that many bytes are free but resident.
#
#   # config/puma.rb
#   plugin :trimalloc
#   trimalloc min_interval: 1.0, min_free: 0   # optional; these are the defaults
#
# In cluster mode each worker trims its own memory.
require "puma/configuration" # Puma::DSL
require "puma/plugin"
require "trimalloc"

module Trimalloc
  # The plugin's settings, as the `trimalloc` line of the Puma config sets them.
  module Puma
    DEFAULTS = { every: nil, min_free: 0, min_interval: 1.0 }.freeze

    class << self
      # The trimmer of this process (a worker's own after fork: the counters
      # are copied at fork and each process counts its own from there).
      def trimmer(options = nil)
        @trimmer ||= Trimmer.new(**settings(options))
      end

      def settings(options)
        opts = DEFAULTS.merge(options || {})
        legacy = PUMA_OPTIONS.reject { |k, v| DEFAULTS[k] == v }
        unless legacy.empty?
          Trimalloc.deprecated_option("Trimalloc::PUMA_OPTIONS", "the `trimalloc` line of the Puma config",
                                      "Puma plugin")
          opts = opts.merge(legacy)
        end
        opts
      end

      # This process's counters ({events:, trims:, skipped:, coalesced:,
      # trimmed_bytes:}), or nil before the plugin's first out-of-band call.
      def stats
        @trimmer&.stats
      end

      def reset!
        @trimmer = nil
      end
    end
  end

  # Deprecated: set the options with `trimalloc min_interval: ...` in the Puma
  # config instead. Still read (with a warning) for one release.
  PUMA_OPTIONS = { min_interval: 1.0, min_free: 0 } # rubocop:disable Style/MutableConstant
end

module Puma
  class DSL
    # `trimalloc every: nil, min_free: 0, min_interval: 1.0` in a Puma config
    # (after `plugin :trimalloc`): the plugin's settings.
    def trimalloc(every: nil, min_free: 0, min_interval: 1.0)
      opts = { every: every, min_free: min_free, min_interval: min_interval }
      Trimalloc::Trimmer.new(**opts) # checks them now, at config load
      @options[:trimalloc] = opts
    end
  end
end

Puma::Plugin.create do
  def config(dsl)
    dsl.out_of_band do
      Trimalloc::Puma.trimmer(dsl.get(:trimalloc)).event
    end
  end
end
