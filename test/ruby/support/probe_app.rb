# frozen_string_literal: true

# The Rack application the server tests run inside real servers (Puma in
# cluster mode): each answer says which process served it and what that
# process runs on, so a test can check every worker.
#
#   /info   JSON: pid, ppid, active (Trimalloc.active?), backend,
#           Trimalloc.stats, the Puma plugin's counters (nil before its first
#           out-of-band trim), rss and hwm (VmRSS, VmHWM)
#   /burst?mb=M  allocates M MiB of 1000-byte strings (one in 1024 kept, as a
#           cache would), drops the rest and runs the GC, so that the memory
#           is free but held until a trim returns it
#
# Either takes `barrier=NAME&n=N`: the request first waits (up to 30 s) until
# N requests with that NAME have arrived, in distinct processes. With one
# thread per worker a busy worker accepts nothing, so N concurrent requests
# with a barrier reach N distinct workers, without relying on timing.
require "json"
require "uri"
require "trimalloc"

module ProbeApp
  KEPT = [] # rubocop:disable Style/MutableConstant
  BARRIER_DIR = ENV.fetch("BARRIER_DIR")

  module_function

  def clock
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def barrier(name, n)
    dir = File.join(BARRIER_DIR, name.gsub(/[^\w-]/, "_"))
    Dir.mkdir(dir) rescue Errno::EEXIST # rubocop:disable Style/RescueModifier
    File.write(File.join(dir, Process.pid.to_s), "")
    deadline = clock + 30
    sleep 0.005 until Dir.children(dir).size >= n || clock > deadline
    Dir.children(dir).size >= n
  end

  def proc_status
    s = File.read("/proc/self/status")
    { rss: s[/^VmRSS:\s+(\d+)/, 1].to_i * 1024, hwm: s[/^VmHWM:\s+(\d+)/, 1].to_i * 1024 }
  end

  def info
    plugin = defined?(Trimalloc::Puma) ? Trimalloc::Puma.stats : nil
    { pid: Process.pid, ppid: Process.ppid, active: Trimalloc.active?, backend: Trimalloc.backend,
      stats: Trimalloc.stats, plugin: plugin }.merge(proc_status)
  end

  def burst(mb)
    junk = Array.new(mb * 1024) do |i|
      s = "b" * 1000
      KEPT << s if (i % 1024).zero?
      s
    end
    junk.clear
    junk = nil # rubocop:disable Lint/UselessAssignment
    GC.start
    { pid: Process.pid }.merge(proc_status)
  end

  def call(env)
    q = URI.decode_www_form(env["QUERY_STRING"].to_s).to_h
    met = q["barrier"] ? barrier(q["barrier"], Integer(q.fetch("n", "1"))) : nil
    body = case env["PATH_INFO"]
           when "/info" then info
           when "/burst" then burst(Integer(q.fetch("mb", "100")))
           else return [404, { "Content-Type" => "text/plain" }, ["not found\n"]]
           end
    body[:barrier] = met
    [200, { "Content-Type" => "application/json" }, [JSON.generate(body)]]
  end
end
