# frozen_string_literal: true

# Puma 5 configuration for puma_test.rb. TRIM=1 loads the plugin; everything
# else is the same in both runs.
require "json"

bind "tcp://127.0.0.1:#{ENV.fetch('PORT')}"
threads 2, 2
workers 0
quiet

if ENV["TRIM"] == "1"
  plugin :trimalloc
  trimalloc min_interval: 0 # the plugin's Puma DSL option
end

cache = []
lock = Mutex.new
plugin_stats = -> { defined?(Trimalloc::Puma) ? Trimalloc::Puma.stats : nil }

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
    [200, { "Content-Type" => "application/json" }, [JSON.generate(Trimalloc.stats.merge(plugin: plugin_stats.call))]]
  else
    [404, {}, []]
  end
end
