# frozen_string_literal: true

# Puma 5 configuration for puma_test.rb. TRIM=1 loads the plugin; everything
# else is the same in both runs. TRIM=watch loads it with the settings of the
# steady-load test (min_free 32 MiB, min_interval 1 s).
require "json"

bind "tcp://127.0.0.1:#{ENV.fetch('PORT')}"
threads 2, 2
workers 0
quiet

if ENV["TRIM"] == "1"
  plugin :trimalloc
  # the plugin's Puma DSL option; the out-of-band trim alone, at every idle
  # moment (min_free 0): with the default 16 MiB a round's garbage counts
  # only once a GC has freed it, and whether a GC runs within a round
  # depends on how full Ruby's heap was before (the gem's own objects too)
  trimalloc min_interval: 0, min_free: 0, watch: false
elsif ENV["TRIM"] == "watch"
  plugin :trimalloc
  trimalloc min_interval: 1.0, min_free: 32 << 20
end

cache = []
lock = Mutex.new
held = 0 # requests inside /hold now (the steady-load test waits for its own)
plugin_stats = -> { defined?(Trimalloc::Puma) ? Trimalloc::Puma.stats : nil }
watch_stats = -> { defined?(Trimalloc::Puma) ? Trimalloc::Puma.watch_stats : nil }

app do |env|
  case env["PATH_INFO"]
  when "/alloc" # allocates and drops ~MB, keeps a few strings (a cache)
    kept = []
    junk = Array.new(Integer(env["QUERY_STRING"]) * 1024) { |i| s = "p" * 1000; kept << s if (i % 1024).zero?; s }
    junk.clear
    lock.synchronize { cache.concat(kept) }
    [200, { "Content-Type" => "text/plain" }, ["ok\n"]]
  when "/gc" # the plugin's counters before its trim after this request
    GC.start
    [200, { "Content-Type" => "application/json" }, [JSON.generate(plugin: plugin_stats.call)]]
  when "/stats"
    require "trimalloc"
    body = Trimalloc.stats.merge(plugin: plugin_stats.call, watch: watch_stats.call, held: lock.synchronize { held })
    [200, { "Content-Type" => "application/json" }, [JSON.generate(body)]]
  when "/hold" # keeps a thread busy for QUERY_STRING seconds (never all idle)
    lock.synchronize { held += 1 }
    begin
      sleep Float(env["QUERY_STRING"])
    ensure
      lock.synchronize { held -= 1 }
    end
    [200, { "Content-Type" => "text/plain" }, ["held\n"]]
  else
    [404, {}, []]
  end
end
