# frozen_string_literal: true

module Trimalloc
  # The heap profiler: which Ruby code holds the memory (README, "Which code
  # holds the memory?"). Sampling is per byte (a mean interval of R bytes, a
  # block of Z bytes sampled with probability 1 - e^(-Z/R), weighed back), so
  # its cost does not depend on how often the program allocates. A sample
  # taken on a thread that holds the GVL carries the Ruby frames of the code
  # that allocated (named "Class#method", with file and line), after the
  # native frames (String#*, a C extension's functions, malloc); one taken on
  # a thread without the GVL (a C extension's own thread, a blocking region)
  # carries native frames only.
  #
  #   Trimalloc::Profile.start(interval: 512 * 1024)   # or TRIMALLOC_PROF=1
  #   Trimalloc::Profile.top(5)         # [{inuse_space:, ..., frames: [...], tag:}, ...]
  #   Trimalloc::Profile.dump           # "/tmp/trimalloc.<pid>.<seq>.dump.pb.gz" (pprof)
  #   Trimalloc::Profile.with_tag("ImportJob") { ... }   # a "tag" label on samples
  #
  # From the extension: Profile.interval (0 while off), Profile.stop,
  # Profile.reset_peak, Profile.frame_stats. start, dump and top raise
  # Trimalloc::Error when trimalloc is not this process's allocator (saying
  # how to run under it); the rest answer (nothing samples).
  module Profile
    # core/bind's (bind_facts.c): dump's kinds, the sample types, the interval's bound
    KINDS = Native::PROF_KINDS
    ORDERS = Native::SAMPLE_TYPES
    MAX_INTERVAL = Native::PROF_MAX_INTERVAL

    class << self
      # Starts sampling (allocations made while it is off are not seen).
      # interval: mean bytes between samples, 1 .. 1 GiB; nil keeps the
      # current one (TRIMALLOC_PROF_INTERVAL, else 512 KiB).
      def start(interval: nil)
        unless interval.nil?
          raise TypeError, "interval must be an Integer or nil (given #{interval.inspect})" unless interval.is_a?(Integer)
          unless interval.between?(1, MAX_INTERVAL)
            raise ArgumentError, "interval must be 1 .. #{MAX_INTERVAL} bytes (given #{interval.inspect})"
          end
        end
        __start(interval || 0)
        self
      end

      # Writes a pprof profile (gzipped profile.proto) of the sampled blocks
      # live now (kind :live) or at the highest point since start or the last
      # reset_peak (:peak). path nil: <TRIMALLOC_PROF_PREFIX>.<pid>.<seq>.<reason>.pb.gz
      # (prefix /tmp/trimalloc by default). Returns the path written. The
      # encoding and writing run without the GVL.
      def dump(path = nil, kind: :live)
        k = KINDS.fetch(kind) { raise ArgumentError, "kind must be :live or :peak (given #{kind.inspect})" }
        __dump(path.nil? ? nil : File.path(path), k)
      end

      # The n call paths (same frames and tag) holding the most `by` (one of
      # ORDERS), largest first; n 0: all. Each a Hash: inuse_space,
      # inuse_objects, alloc_space, alloc_objects (estimated, unbiased),
      # frames (leaf first, "Class#method (file:line)" or a native
      # "function (object)"), tag (nil when the thread had none).
      def top(n = 10, by: :inuse_space, kind: :live)
        raise TypeError, "n must be an Integer (given #{n.inspect})" unless n.is_a?(Integer)
        raise ArgumentError, "n must be >= 0 (given #{n})" if n.negative?

        order = by.to_s.to_sym if by.is_a?(String) || by.is_a?(Symbol)
        unless ORDERS.include?(order)
          raise ArgumentError, "by must be one of #{ORDERS.map(&:inspect).join(', ')} (given #{by.inspect})"
        end

        require "tmpdir" # here, not at `require "trimalloc"`: top alone uses it
        Dir.mktmpdir("trimalloc-top") do |dir|
          path = dump(File.join(dir, "top.pb.gz"), kind: kind)
          Native.prof_top(path, order.to_s, n) # core/bind's reader (prof_read.c)
        end
      end

      # This thread's tag (a job class, a route): a pprof label "tag" on the
      # samples it takes, `trimalloc top` shows it. nil or "" clears. At most
      # 63 bytes are kept. Works (and does nothing) when trimalloc is not
      # the allocator, so the job integrations can always call it.
      # The tag belongs to the thread, shared by its fibers: a fiber that a
      # Fiber scheduler (Falcon) suspends and resumes keeps whatever tag the
      # fibers that ran meanwhile left (Trimalloc::Rack says what that means
      # for requests); an Enumerator's fiber carries its caller's tag.
      def tag=(tag)
        unless tag.nil? || tag.is_a?(String) || tag.is_a?(Symbol)
          raise TypeError, "tag must be a String, Symbol or nil (given #{tag.inspect})"
        end

        tag = tag&.to_s
        tag = nil if tag&.empty?
        if tag&.include?("\0")
          raise ArgumentError, "tag must not contain a NUL byte (given #{tag.inspect})"
        end

        __set_tag(tag)
        Thread.current.thread_variable_set(:trimalloc_profile_tag, tag)
      end

      def tag
        Thread.current.thread_variable_get(:trimalloc_profile_tag)
      end

      # Tags this thread's samples with `tag` for the block; the tag before
      # is back after it, however the block ends.
      def with_tag(tag)
        before = self.tag
        self.tag = tag
        begin
          yield
        ensure
          self.tag = before
        end
      end
    end
  end
end
