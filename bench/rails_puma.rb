# frozen_string_literal: true

# A Rails 6.1 app under `bundle exec puma` (cluster: 2 workers x 5 threads,
# preload_app!, SQLite; ERB pages, a JSON API, a CSV export in 1 request of
# 50), the app of test/ruby/rails_test.rb, set up the same way (Puma loaded
# into Bundler's process, as on rbenv or the Docker ruby images). Each row
# runs the same requests from 10 keep-alive clients and reports the sum of
# the workers' RSS at 10% of the requests, at the end, and 3 s after, and
# the server's CPU (master and workers, user + system):
#   glibc       the app without trimalloc (no preload line, plugin or GC hook)
#   arena2      the same with MALLOC_ARENA_MAX=2
#   jemalloc    the same with Debian's libjemalloc in LD_PRELOAD
#   hooks       glibc with the plugin and Trimalloc::GC.enable (malloc_trim)
#   trimalloc   the app as the README sets it up (config/puma.rb's preload
#               line, plugin :trimalloc, Trimalloc::GC.enable)
#   launcher    the same app started with `trimalloc run -- bundle exec puma`
#
#   ruby bench/rails_puma.rb [--requests 4000] [--repeat 3] [--rows glibc,trimalloc]
# BENCH_VERBOSE=1 prints each worker's trims (the GC hook's skips too);
# BENCH_GC_ENABLE="min_free: 0" (or "off") changes the app's GC hook.
# Needs `rake compile` (the Gemfile takes trimalloc from this checkout) and
# Debian's ruby-rails, ruby-sqlite3, bundler, puma, libjemalloc2.
require "optparse"
require "socket"
require "tmpdir"
require_relative "../test/ruby/support/rails_setup"

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
ROWS = %w[glibc arena2 jemalloc hooks trimalloc launcher].freeze
opts = { requests: 4000, repeat: 1, rows: ROWS }
OptionParser.new do |o|
  o.on("--requests N", Integer) { |v| opts[:requests] = v }
  o.on("--repeat N", Integer) { |v| opts[:repeat] = v }
  o.on("--rows LIST", Array) { |v| opts[:rows] = v }
end.parse!
(opts[:rows] - ROWS).each { |r| abort "unknown row #{r} (rows: #{ROWS.join(',')})" }

CLK_TCK = 100.0
MiB = 1 << 20

def rss(pid)
  File.read("/proc/#{pid}/status")[/^VmRSS:\s+(\d+)/, 1].to_i * 1024
end

def stat(pid)
  File.read("/proc/#{pid}/stat").split(") ", 2)[1].split
end

def cpu(pid)
  f = stat(pid)
  (f[11].to_i + f[12].to_i) / CLK_TCK
end

def sys_cpu(pid)
  stat(pid)[12].to_i / CLK_TCK
end

def minflt(pid)
  stat(pid)[7].to_i
end

def free_port
  s = TCPServer.new("127.0.0.1", 0)
  s.addr[1]
ensure
  s&.close
end

def wait_until(what, timeout: 120)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
  until (v = yield)
    raise "timed out waiting for #{what}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep 0.1
  end
  v
end

# The app without trimalloc: no preload line, no plugin, no GC hook.
def strip_trimalloc(app, keep_hooks:)
  puma = File.join(app, "config", "puma.rb")
  lines = File.readlines(puma).reject { |l| l.start_with?('require "trimalloc/preload"') }
  lines.reject! { |l| l.start_with?("plugin :trimalloc") } unless keep_hooks
  File.write(puma, lines.join)
  File.delete(File.join(app, "config", "initializers", "trimalloc.rb")) unless keep_hooks
end

def run_row(row, requests)
  Dir.mktmpdir("trimalloc-rails-bench") do |dir|
    base = { "LD_PRELOAD" => nil, "RUBYOPT" => nil, "RUBYLIB" => nil, "TRIMALLOC_PRELOAD_GUARD" => nil }
    app, env = RailsSetup.prepare(dir, base)
    strip_trimalloc(app, keep_hooks: row == "hooks") unless %w[trimalloc launcher].include?(row)
    # BENCH_PUMA_LINE: a line added to config/puma.rb (e.g. a `trimalloc ...` setting)
    File.write(File.join(app, "config", "puma.rb"), "#{ENV['BENCH_PUMA_LINE']}\n", mode: "a") if ENV["BENCH_PUMA_LINE"]
    # BENCH_GC_ENABLE: the initializer's GC hook with these arguments (e.g.
    # "min_free: 0"), or "off" for none
    init = File.join(app, "config", "initializers", "trimalloc.rb")
    if ENV["BENCH_GC_ENABLE"] && File.exist?(init)
      line = ENV["BENCH_GC_ENABLE"] == "off" ? "" : "Trimalloc::GC.enable(#{ENV['BENCH_GC_ENABLE']})"
      File.write(init, File.read(init).sub(/^Trimalloc::GC\.enable.*$/, line))
    end
    env["MALLOC_ARENA_MAX"] = "2" if row == "arena2"
    env["LD_PRELOAD"] = JEMALLOC if row == "jemalloc"
    port = free_port
    env["PORT"] = port.to_s
    log = File.join(dir, "puma.log")
    cmd = %w[bundle exec puma -C config/puma.rb]
    if row == "launcher"
      cmd = [RbConfig.ruby, "-I", File.join(RailsSetup::ROOT, "ext-ruby", "lib"),
             File.join(RailsSetup::ROOT, "ext-ruby", "exe", "trimalloc"), "run", "--", *cmd]
    end
    pid = Process.spawn(env, *cmd, chdir: app, pgroup: true, in: File::NULL, out: log, err: %i[child out])
    begin
      workers = wait_until("2 workers booted") do
        w = File.read(log).scan(/Worker \d+ \(PID: (\d+)\) booted/).flatten.map(&:to_i)
        w.size >= 2 && w
      end
      on = workers.map { |w| File.read("/proc/#{w}/maps").include?("libtrimalloc.so") }
      expect = %w[trimalloc launcher].include?(row)
      raise "#{row}: workers on trimalloc: #{on} (log:\n#{File.read(log)})" unless on.all?(expect)

      tenth = requests / 10
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      bad = RailsSetup.load(port, tenth)
      at10 = workers.sum { |w| rss(w) }
      bad += RailsSetup.load(port, requests - tenth, first: tenth)
      wall = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
      at_end = workers.sum { |w| rss(w) }
      master_cpu = cpu(pid)
      faults = workers.sum { |w| minflt(w) }
      cpu_s = master_cpu + workers.sum { |p| cpu(p) }
      sys_s = workers.sum { |p| sys_cpu(p) }
      sleep 3
      idle = workers.sum { |w| rss(w) }
      probes = {}
      20.times do
        break if probes.size == workers.size

        r = JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}/probe")), symbolize_names: true)
        probes[r[:pid]] = r
      end
      trims = probes.values.map { |r| "oob #{r.dig(:plugin, :trims).inspect} watch #{r.dig(:watch, :trims).inspect} gc #{r.dig(:gc, :trims)} (skipped #{r.dig(:gc, :skipped)}, for min_free #{r.dig(:gc, :skipped_free).inspect}, #{r.dig(:gc, :trimmed_bytes).to_i >> 20} MiB) all #{r[:trims]} arenas #{r[:arenas].inspect}" }
      warn "  #{row}: #{trims.join('; ')}" if ENV["BENCH_VERBOSE"]
      raise "#{row}: #{bad} requests failed" unless bad.zero?

      { row: row, at10: at10, end: at_end, idle: idle, cpu: cpu_s, master_cpu: master_cpu, wall: wall,
        faults: faults, sys: sys_s }
    ensure
      begin
        Process.kill("TERM", pid)
        Timeout.timeout(20) { Process.wait(pid) }
      rescue StandardError
        Process.kill("KILL", -pid) rescue nil # rubocop:disable Style/RescueModifier
        Process.wait(pid) rescue nil # rubocop:disable Style/RescueModifier
      end
    end
  end
end

results = Hash.new { |h, k| h[k] = [] }
opts[:repeat].times do |rep|
  opts[:rows].each do |row|
    r = run_row(row, opts[:requests])
    warn format("run %d %-9s  10%%: %5d MiB  end: %5d MiB  +3s: %5d MiB  cpu %6.1f s (master %.1f, " \
                "workers' system %.1f)  wall %5.1f s  workers' minor faults %d", rep + 1, row, r[:at10] / MiB,
                r[:end] / MiB, r[:idle] / MiB, r[:cpu], r[:master_cpu], r[:sys], r[:wall], r[:faults])
    results[row] << r
  end
end

median = ->(a) { s = a.sort; s[s.size / 2] }
base = results["glibc"].empty? ? nil : results["glibc"]
puts format("%-10s %10s %10s %10s %8s %8s %8s", "row", "10% MiB", "end MiB", "+3s MiB", "end/glibc", "cpu s", "cpu/glibc")
opts[:rows].each do |row|
  rs = results[row]
  e = median.call(rs.map { |r| r[:end] })
  c = median.call(rs.map { |r| r[:cpu] })
  ge = base && median.call(base.map { |r| r[:end] })
  gc = base && median.call(base.map { |r| r[:cpu] })
  puts format("%-10s %10d %10d %10d %8s %8.1f %8s", row, median.call(rs.map { |r| r[:at10] }) / MiB, e / MiB,
              median.call(rs.map { |r| r[:idle] }) / MiB, ge ? format("%.2f", e.to_f / ge) : "-", c,
              gc ? format("%.2f", c / gc) : "-")
end
puts "(median of #{opts[:repeat]}; min end MiB: " +
     opts[:rows].map { |r| "#{r} #{results[r].map { |x| x[:end] }.min / MiB}" }.join(", ") + ")"
