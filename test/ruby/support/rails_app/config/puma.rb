# frozen_string_literal: true

# Puma as the README's Rails section sets it up: the preload line first (the
# master re-executes itself on trimalloc before it loads the app; the
# workers it forks inherit it), the plugin for out-of-band and steady-load
# trims. Trimalloc::GC.enable is in config/initializers/trimalloc.rb.
require "trimalloc/preload"

threads_count = ENV.fetch("RAILS_MAX_THREADS", 5).to_i
threads threads_count, threads_count
workers ENV.fetch("WEB_CONCURRENCY", 2).to_i
preload_app!
bind "tcp://127.0.0.1:#{ENV.fetch('PORT', 3000)}"
environment ENV.fetch("RAILS_ENV", "production")
worker_timeout 120

plugin :trimalloc
