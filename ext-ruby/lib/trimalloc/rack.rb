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
  # With tag: true (the default), while the heap profiler samples, the
  # request's path (SCRIPT_NAME + PATH_INFO, no query string) is the thread's
  # profiler tag until its body is closed: the samples taken meanwhile carry
  # it as their "tag" label (Trimalloc::Profile). With the profiler off (the
  # default) a request makes no tag calls: whether it samples is asked of the
  # core (Profile.interval, one C call, as cheap as reading a Ruby flag, and
  # it sees sampling however it started: Profile.start, TRIMALLOC_PROF=1,
  # `trimalloc run --profile`). A request that began while it was off stays
  # untagged if it is switched on before the request ends; one that began
  # tagged has the tag before it put back when it ends, whatever happened to
  # the profiler meanwhile. The route template (Rails' route, Sinatra's) is
  # known only once the app has routed the request, after the allocations
  # that matter began, so it is not used. tag: a Proc(env) -> String chooses
  # another tag (a template from the path, a header).
  #
  # The tag is the thread's, not the fiber's. On a threaded server (Puma,
  # Unicorn) that is exact. On a server that runs requests as fibers of one
  # thread under a Fiber scheduler (Falcon), it is not: once a request's fiber
  # waits on IO and another request starts or ends, the first one's later
  # samples carry the tag that other request set or put back, and a request's
  # end puts back the tag its start found, which may be another request's
  # (left on the thread until a request sets one again). Making it exact needs
  # the tag set at every fiber switch (a TracePoint on :fiber_switch): that
  # hook then runs on every switch in the process, Enumerator#next included
  # (two switches each, measured 0.6-1.0 us bare, +0.45-0.9 us with a hook
  # that reads a fiber-local), and Ruby 3.1 has no inheritable fiber storage,
  # so an Enumerator's fiber would lose its caller's tag; it is not done.
  #
  #   use Trimalloc::Rack  # or with every:, min_free:, min_interval:, tag: (DEFAULTS below)
  class Rack
    # core/bind's defaults for request hooks (core/bind/bind_facts.c, which
    # says why; as the Python WSGI's)
    DEFAULTS = Native::DEFAULTS[:request].merge(tag: true).freeze

    attr_reader :trimmer

    def initialize(app, every: DEFAULTS[:every], min_free: DEFAULTS[:min_free],
                   min_interval: DEFAULTS[:min_interval], tag: DEFAULTS[:tag])
      unless [true, false, nil].include?(tag) || tag.respond_to?(:call)
        raise TypeError, "tag must be true, false or a Proc(env) (given #{tag.inspect})"
      end

      @app = app
      @trimmer = Trimmer.new(every: every, min_free: min_free, min_interval: min_interval)
      @tag = tag
    end

    def call(env)
      before = tag_request(env)
      status, headers, body = @app.call(env)
      [status, headers, ::Rack::BodyProxy.new(body) { request_ended(before) }]
    rescue Exception # rubocop:disable Lint/RescueException
      request_ended(before) # the request ended, by raising
      raise
    end

    # {events:, trims:, skipped:, coalesced:, trimmed_bytes:}
    def stats
      @trimmer.stats
    end

    private

    # Sets the request's tag; returns the thread's tag before it (:none when
    # tagging is off, or the profiler is).
    def tag_request(env)
      return :none unless @tag && Profile.interval != 0

      before = Profile.tag
      Profile.tag = @tag == true ? "#{env['SCRIPT_NAME']}#{env['PATH_INFO']}" : @tag.call(env)
      before
    end

    def request_ended(before)
      Profile.tag = before unless before == :none
      @trimmer.event
    end
  end
end
