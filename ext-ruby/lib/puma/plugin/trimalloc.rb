# frozen_string_literal: true

# Puma plugin: trims when every thread of a worker is idle (Puma's
# out_of_band hook), at most once per min_interval seconds and, with
# min_free > 0, only when that many bytes are free but resident. A worker
# whose threads are never all idle at once (steady load) gets no such call,
# so each worker also runs a watch: a thread that looks every min_interval
# seconds and trims, without the GVL, once min_free bytes are free (the
# `watch:` setting; false turns it off).
#
#   # config/puma.rb
#   plugin :trimalloc
#   trimalloc min_free: 32 << 20   # optional; the others stay Trimalloc::Puma::DEFAULTS
#
# In cluster mode each worker trims its own memory.
require "puma/configuration" # Puma::DSL
require "puma/plugin"
require "trimalloc"

module Trimalloc
  # The plugin's settings, as the `trimalloc` line of the Puma config sets them.
  module Puma
    # core/bind's defaults for the out-of-band hook (bind_facts.c says why
    # min_free is 16 MiB there, not 0 as for jobs), and the watch on.
    DEFAULTS = Native::DEFAULTS[:out_of_band].merge(watch: true).freeze
    # The watch looks at most this often (min_interval 0 means "no limit").
    WATCH_PERIOD_MIN = 0.1

    class << self
      # The trimmer of this process (a worker's own after fork: the counters
      # are copied at fork and each process counts its own from there).
      def trimmer(options = nil)
        @trimmer ||= Trimmer.new(**settings(options).reject { |k, _| k == :watch })
      end

      # Starts this process's watch, once (a worker calls it when it has
      # booted; a server in single mode at start): a thread that every
      # min_interval seconds (at least WATCH_PERIOD_MIN) counts an event on
      # a trimmer of its own with the plugin's min_free and min_interval. The
      # trim runs on that thread without the GVL, never on a request's; one
      # held back by the process-wide rate limit runs when due on the
      # policy's background thread. Returns the thread, or nil when the watch
      # is off (watch: false, or min_free: nil: nothing to watch).
      def watch(options = nil)
        return @watch if @watch_pid == Process.pid && @watch&.alive?

        opts = settings(options)
        return nil unless opts[:watch] && opts[:min_free]

        @watcher = Trimmer.new(min_free: opts[:min_free], min_interval: opts[:min_interval])
        period = [opts[:min_interval], WATCH_PERIOD_MIN].max
        @watch_pid = Process.pid
        @watch = Thread.new(@watcher) do |w|
          Thread.current.name = "trimalloc-watch"
          loop do
            sleep period
            w.event
          end
        end
      end

      # The watch's counters in this process ({events:, trims:, ...}), or nil
      # when it does not run here.
      def watch_stats
        @watcher&.stats if @watch_pid == Process.pid
      end

      def settings(options)
        opts = DEFAULTS.merge(options || {})
        legacy = PUMA_OPTIONS.reject { |k, v| DEFAULTS[k] == v }
        unless legacy.empty?
          Native.deprecated_option("Trimalloc::PUMA_OPTIONS", "the `trimalloc` line of the Puma config",
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
        @watch&.kill
        @watch = @watcher = @watch_pid = nil
      end
    end
  end

  # Deprecated: set the options with `trimalloc min_interval: ...` in the Puma
  # config instead. Still read (with a warning) for one release.
  PUMA_OPTIONS = Puma::DEFAULTS.slice(:min_interval, :min_free) # rubocop:disable Style/MutableConstant
end

module Puma
  class DSL
    # `trimalloc every:, min_free:, min_interval:, watch:` in a Puma config
    # (after `plugin :trimalloc`): the plugin's settings, each defaulting to
    # Trimalloc::Puma::DEFAULTS' (core/bind/bind_facts.c's :out_of_band row).
    def trimalloc(every: Trimalloc::Puma::DEFAULTS[:every], min_free: Trimalloc::Puma::DEFAULTS[:min_free],
                  min_interval: Trimalloc::Puma::DEFAULTS[:min_interval], watch: Trimalloc::Puma::DEFAULTS[:watch])
      opts = { every: every, min_free: min_free, min_interval: min_interval }
      Trimalloc::Trimmer.new(**opts) # checks them now, at config load
      unless [true, false].include?(watch)
        raise TypeError, "trimalloc: watch must be true or false (given #{watch.inspect})"
      end

      @options[:trimalloc] = opts.merge(watch: watch)
    end
  end
end

Puma::Plugin.create do
  def config(dsl)
    dsl.out_of_band do
      Trimalloc::Puma.trimmer(dsl.get(:trimalloc)).event
    end
    dsl.on_worker_boot { |*| Trimalloc::Puma.watch(dsl.get(:trimalloc)) }
  end

  # Cluster mode: this is the master, which serves nothing (each worker
  # starts its watch when it boots). Single mode: this process serves.
  def start(launcher)
    Trimalloc::Puma.watch(launcher.options[:trimalloc]) if launcher.options[:workers].to_i.zero?
  end
end
