# frozen_string_literal: true

require "trimalloc"

module Trimalloc
  # Sidekiq server middleware: after each job, trims when at least `min_free`
  # bytes are free but resident (0: after every job), or every `every` jobs
  # (nil: off); never twice within min_interval seconds (process-wide, so
  # many job threads trim at most once per interval). A trim skipped by the
  # rate limit runs when due on a background thread. Same policy and names as
  # the Python package's Celery integration (Trimalloc::Trimmer), the refault
  # budget too (refault_share:, 0.1 by default: a trim whose refaults would
  # cost more than that share of the CPU spent since the last one waits, and
  # runs when the worker goes idle; 0: off; see core/bind/binding.h).
  # With tag: true (the default), while the heap profiler samples, the job's
  # class (an ActiveJob's wrapped class) is the thread's profiler tag while it
  # runs: the samples it takes carry it as their "tag" label
  # (Trimalloc::Profile). With the profiler off (the default) a job makes no
  # tag calls; a job that began while it was off stays untagged if it is
  # switched on before the job ends; one that began tagged has the tag before
  # it put back when it ends, whatever happened to the profiler meanwhile.
  #
  #   Sidekiq.configure_server do |config|
  #     config.server_middleware { |chain| chain.add Trimalloc::Sidekiq, min_interval: 1.0 }
  #   end
  class Sidekiq
    # core/bind's defaults for job hooks (core/bind/bind_facts.c, which says
    # why; as the Python Celery integration's)
    DEFAULTS = Native::DEFAULTS[:job].merge(tag: true).freeze

    attr_reader :trimmer

    def initialize(options = {})
      opts = DEFAULTS.merge(options.transform_keys(&:to_sym))
      unknown = opts.keys - DEFAULTS.keys
      raise ArgumentError, "unknown option(s) #{unknown.map(&:inspect).join(', ')}" unless unknown.empty?

      @tag = opts.delete(:tag) ? true : false
      @trimmer = Trimalloc::Sidekiq.shared_trimmer(opts)
    end

    # Sidekiq creates a middleware object per job: the trimmer (its counters)
    # is kept per set of options.
    def self.shared_trimmer(opts)
      @trimmers ||= {}
      @lock ||= Mutex.new
      @lock.synchronize { @trimmers[opts] ||= Trimmer.new(**opts) }
    end

    def self.trimmers
      (@trimmers || {}).values
    end

    def call(_worker, job, _queue)
      if @tag && Profile.interval != 0 # the core's answer: sampling however started
        Profile.with_tag(job["wrapped"] || job["class"]) { yield }
      else
        yield
      end
    ensure
      @trimmer.event
    end
  end
end
