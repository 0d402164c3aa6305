# frozen_string_literal: true

# Shared by test/ruby/*_test.rb. Anything that depends on which allocator the
# process runs on is run in a child ruby (with or without LD_PRELOAD), so the
# test process itself stays on glibc.
require "minitest/autorun"
require "json"
require "open3"
require "rbconfig"
require "socket"
require "timeout"
require "tmpdir"
require "trimalloc"

module TrimallocTest
  ROOT = File.expand_path("../..", __dir__)
  LIB_DIR = File.join(ROOT, "ext-ruby", "lib")
  EXE = File.join(ROOT, "ext-ruby", "exe", "trimalloc")
  SUPPORT = File.join(__dir__, "support")
  RUBY = RbConfig.ruby
  MiB = 1 << 20

  # Variables that would change what a child runs on are cleared.
  CLEAN_ENV = {
    "LD_PRELOAD" => nil, "RUBYOPT" => nil, "TRIMALLOC_PRELOAD_GUARD" => nil,
    "RUBYLIB" => LIB_DIR
  }.freeze

  # The core's stats field names, parsed from the X-macro in core/trimalloc.h
  # (the reference the Ruby hash is compared with).
  def self.core_field_names
    header = File.read(File.join(ROOT, "core", "trimalloc.h"))
    block = header[/#define TRIMALLOC_STATS_FIELDS\(X\)(.*?)\n\s*\n/m, 1] or raise "no field list in trimalloc.h"
    block.scan(/X\(\s*\w+\s*,\s*(\w+)\s*,/).flatten.map(&:to_sym)
  end

  def library
    Trimalloc.library_path
  rescue Errno::ENOENT => e
    flunk "#{e.message} (run `rake compile`)"
  end

  def child_env(preload: false, env: {})
    e = CLEAN_ENV.merge(env)
    e["LD_PRELOAD"] = library if preload
    e
  end

  # Runs `code` in a child ruby; returns [stdout, stderr, Process::Status].
  def run_ruby(code, preload: false, env: {}, args: [])
    Open3.capture3(child_env(preload: preload, env: env), RUBY, "-e", code, "--", *args)
  end

  # Runs `code` in a child ruby whose last stdout line is JSON; returns it
  # parsed, with symbol keys. Fails with the child's stderr on error.
  def ruby_json(code, preload: false, env: {}, args: [])
    out, err, st = run_ruby("require 'json'\n#{code}", preload: preload, env: env, args: args)
    assert st.success?, "child ruby failed (#{st.inspect}):\n#{err}\n#{out}"
    JSON.parse(out.lines.last, symbolize_names: true)
  end

  # The last trim an hour ago, in this process: the rate limit lets the next
  # trim run (and an hour of CPU time ago: so does a refault budget). A
  # deferred trim this wakes up is waited for (then the clock and the CPU time
  # are moved past it too: a deferred trim that ran in the wait left its own
  # CPU time as the last trim's, and a refault budget then held the test's
  # first trim back), so that it cannot land in the middle of a test.
  def fresh_rate_limit
    Trimalloc.send(:advance_cpu, 3600)
    Trimalloc.send(:advance_clock, 3600)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
    loop do
      p = Trimalloc.policy_stats
      break if !p[:pending] && !p[:busy]
      flunk "a deferred trim did not finish" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      sleep 0.005
    end
    Trimalloc.send(:advance_clock, 3600)
    Trimalloc.send(:advance_cpu, 3600)
  end

  def free_port
    s = TCPServer.new("127.0.0.1", 0)
    s.addr[1]
  ensure
    s&.close
  end

  def wait_for_port(port, pid, timeout: 30)
    Timeout.timeout(timeout) do
      loop do
        flunk "server (pid #{pid}) exited before listening" if Process.waitpid(pid, Process::WNOHANG)
        begin
          TCPSocket.new("127.0.0.1", port).close
          return
        rescue Errno::ECONNREFUSED
          sleep 0.05
        end
      end
    end
  end

  # Stops a process started by a test: TERM, then KILL after `grace` seconds.
  def stop_process(pid, grace: 10)
    return unless pid

    Process.kill("TERM", pid)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + grace
    until Process.waitpid(pid, Process::WNOHANG)
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        Process.kill("KILL", pid)
        Process.waitpid(pid)
        break
      end
      sleep 0.05
    end
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  def rss_of(pid)
    File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+) kB/, 1].to_i * 1024
  end

  # {rss:, hwm:} of a process (VmRSS, and VmHWM: its peak RSS), bytes.
  def proc_status(pid)
    s = File.read("/proc/#{pid}/status")
    { rss: s[/^VmRSS:\s+(\d+) kB/, 1].to_i * 1024, hwm: s[/^VmHWM:\s+(\d+) kB/, 1].to_i * 1024 }
  end

  # Whether trimalloc's library is mapped into a process (its allocator).
  def maps_trimalloc?(pid)
    File.read("/proc/#{pid}/maps").include?("/libtrimalloc.so")
  end

  # The pids whose parent is `pid` (from /proc/*/stat).
  def children_of(pid)
    Dir.glob("/proc/[0-9]*/stat").filter_map do |f|
      stat = File.read(f) rescue next # rubocop:disable Style/RescueModifier
      f[%r{/proc/(\d+)/}, 1].to_i if stat[/\) \S (\d+)/, 1].to_i == pid
    end.sort
  end

  def clock
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Polls the block until it returns a truthy value, which it returns; fails
  # naming `what` after `timeout` seconds. What a test waits for is a
  # condition (a counter, a log line, an RSS), never a fixed time.
  def wait_until(what, timeout: 60, step: 0.02)
    deadline = clock + timeout
    loop do
      v = yield
      return v if v
      flunk "timed out after #{timeout} s waiting for #{what}" if clock > deadline
      sleep step
    end
  end

  # Starts a server in a process group of its own (its workers are stopped
  # with it), stdin closed, stdout and stderr appended to `log`.
  def spawn_server(env, *cmd, log:)
    Process.spawn(env, *cmd, pgroup: true, in: File::NULL, out: [log, "a"], err: %i[child out])
  end

  # Stops a process group started by spawn_server, by its id, as systemd's
  # KillMode=mixed does: TERM to the leader (a master stops its own workers),
  # KILL to the whole group once the leader has exited or after `grace`
  # seconds, then reaps the leader (not before: until it is reaped its pid,
  # the group's id, cannot be reused).
  def stop_group(pid, grace: 20)
    return unless pid

    begin
      Process.kill("TERM", pid)
    rescue Errno::ESRCH
      nil
    end
    deadline = clock + grace
    sleep 0.02 until zombie_or_gone?(pid) || clock > deadline
    signal_group("KILL", pid)
    Process.waitpid(pid)
  rescue Errno::ECHILD
    nil
  end

  def signal_group(sig, pid)
    Process.kill(sig, -pid)
  rescue Errno::ESRCH, Errno::EPERM
    nil
  end

  def zombie_or_gone?(pid)
    File.read("/proc/#{pid}/stat")[/\) (\S)/, 1] == "Z"
  rescue Errno::ENOENT, Errno::ESRCH
    true
  end

  # GET path from 127.0.0.1:port (one connection, closed after the answer);
  # returns the parsed JSON body, symbol keys.
  def http_json(port, path, timeout: 120)
    require "net/http"
    Net::HTTP.start("127.0.0.1", port, open_timeout: timeout, read_timeout: timeout) do |h|
      r = h.get(path, "Connection" => "close")
      assert_equal "200", r.code, "GET #{path}: #{r.code} #{r.body}"
      JSON.parse(r.body, symbolize_names: true)
    end
  end

  # The same request to `n` workers at once: the probe apps (support/
  # probe_app.rb, test/python/fixtures/probe_app.py) hold each request at a
  # barrier until all n arrived, and a worker with one thread accepts no
  # connection while it holds one, so each answer comes from another worker.
  def on_each_worker(port, path, n)
    name = "b#{Process.pid}-#{rand(1 << 40).to_s(36)}"
    sep = path.include?("?") ? "&" : "?"
    Array.new(n) { Thread.new { http_json(port, "#{path}#{sep}barrier=#{name}&n=#{n}") } }.map(&:value)
  end

  # Starts a redis-server on a free loopback port, yields its URL, stops it.
  def with_redis
    port = free_port
    pid = Process.spawn("redis-server", "--bind", "127.0.0.1", "--port", port.to_s, "--save", "",
                        "--appendonly", "no", "--protected-mode", "yes",
                        out: File::NULL, err: File::NULL)
    wait_for_port(port, pid)
    yield "redis://127.0.0.1:#{port}/0"
  ensure
    stop_process(pid)
  end
end
