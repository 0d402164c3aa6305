# frozen_string_literal: true

module Trimalloc
  # The extension's internals, not API (private_constant below): core/bind's
  # facts (DEFAULTS and the constants TA_BIND_FACTS in core/bind/binding.h
  # lists, purger_state, from the C extension), the profile
  # readers (prof_top, prof_top_text, prof_flame) and what the public
  # methods are built on. The C functions
  # here only convert (NUM2DBL, NUM2LL): the argument checks, each naming the
  # value, are the Ruby methods below, and the public methods call them first.
  module Native
    INT64_MAX = (1 << 63) - 1

    class << self
      # Seconds: a Numeric >= 0 (NaN is not).
      def seconds(value, name)
        raise TypeError, "#{name} must be Numeric (given #{value.inspect})" unless value.is_a?(Numeric)
        raise ArgumentError, "#{name} must be >= 0 (given #{value.inspect})" unless value.to_f >= 0

        value.to_f
      end

      # A share of CPU time (refault_share): a Numeric, finite and >= 0.
      def share(value, name)
        raise TypeError, "#{name} must be Numeric (given #{value.inspect})" unless value.is_a?(Numeric)
        unless value.to_f >= 0 && value.to_f.finite?
          raise ArgumentError, "#{name} must be finite and >= 0 (given #{value.inspect})"
        end

        value.to_f
      end

      # A byte count, Integer >= 0 (clamped to INT64_MAX); nil -> -1 (off).
      def bytes_or_nil(value, name)
        return -1 if value.nil?
        raise TypeError, "#{name} must be an Integer (bytes) or nil (given #{value.inspect})" unless value.is_a?(Integer)
        raise ArgumentError, "#{name} must be >= 0 (given #{value.inspect})" if value.negative?

        [value, INT64_MAX].min
      end

      # A positive Integer; nil -> 0 (off).
      def count_or_nil(value, name)
        return 0 if value.nil?
        return value if value.is_a?(Integer) && value.positive?

        raise value.is_a?(Integer) ? ArgumentError : TypeError,
              "#{name} must be a positive Integer or nil (given #{value.inspect})"
      end

      # Warns once, on first use, about an option name kept for one release.
      def deprecated_option(old, new, where)
        @deprecated ||= {}
        key = [old, where]
        return if @deprecated[key]

        @deprecated[key] = true
        warn "trimalloc: #{where}: #{old} is deprecated, use #{new} (the old name goes in the next release)",
             uplevel: 2
      end
    end
  end
  private_constant :Native

  # One hook's trim policy (core/bind's trimmer); see trimmer.c.
  class Trimmer
    # every: a positive Integer or nil (off); min_free: bytes, or nil (off);
    # min_interval: seconds; refault_share: the share of the CPU time the
    # refaults of its trims may cost (0: no refault budget; binding.h).
    # Defaults: core/bind's for a trimmer.
    def initialize(every: Native::DEFAULTS[:trimmer][:every], min_free: Native::DEFAULTS[:trimmer][:min_free],
                   min_interval: Native::DEFAULTS[:trimmer][:min_interval],
                   refault_share: Native::DEFAULTS[:trimmer][:refault_share])
      every = Native.count_or_nil(every, "every")
      min_free = Native.bytes_or_nil(min_free, "min_free")
      raise ArgumentError, "every and min_free are both nil: nothing would ever trim" if every.zero? && min_free.negative?

      setup(every, min_free, Native.seconds(min_interval, "min_interval"), Native.share(refault_share, "refault_share"))
    end

    # #every, #min_free, #min_interval, #refault_share: the settings as
    # core/bind holds them (nil: off), named as its defaults are.
    Native::DEFAULTS[:trimmer].each_key { |name| define_method(name) { settings[name] } }
  end

  # Rate-limited trim (process-wide): bytes released, or nil when skipped
  # (too soon, or less than min_free bytes free).
  def self.trim_if_due(min_interval: Native::DEFAULTS[:trimmer][:min_interval],
                       min_free: Native::DEFAULTS[:trimmer][:min_free])
    raise TypeError, "min_free must be an Integer (given nil)" if min_free.nil?

    Native.trim_if_due(Native.seconds(min_interval, "min_interval"), Native.bytes_or_nil(min_free, "min_free"))
  end

  module GC
    # Trims after the GC's sweep (major GCs only, unless major_only: false),
    # at most once per min_interval seconds, when at least min_free bytes are
    # free but resident (0: after every GC; GC.start's trim ignores it).
    # min_free's default is core/bind's :gc row on the trimalloc backend,
    # whose purger returns free pages by itself: a trim of a few MiB there
    # only makes Ruby's next allocations fault them back in. On glibc (no
    # purger, and a free figure that counts memory already returned) it is 0:
    # every major GC trims. Returns true.
    def self.enable(major_only: true, min_interval: Native::DEFAULTS[:gc][:min_interval],
                    min_free: default_min_free)
      unless [true, false].include?(major_only)
        raise TypeError, "major_only must be true or false (given #{major_only.inspect})"
      end
      raise TypeError, "min_free must be an Integer (bytes) (given nil)" if min_free.nil?

      Native.gc_enable(major_only, Native.seconds(min_interval, "min_interval"),
                       Native.bytes_or_nil(min_free, "min_free"))
    end

    # The min_free GC.enable takes by default on this process's backend.
    def self.default_min_free
      Trimalloc.backend == :trimalloc ? Native::DEFAULTS[:gc][:min_free] : 0
    end
    private_class_method :default_min_free
  end
end
