# frozen_string_literal: true

# config/puma.rb of the Puma cluster tests (puma_cluster_test.rb): 2 workers
# of one thread each, the trimalloc plugin trimming out of band.
# PRELOAD_IN=puma.rb puts the preload line where the README puts it: first,
# before preload_app! (the master re-executes itself before it forks).
require "trimalloc/preload" if ENV["PRELOAD_IN"] == "puma.rb"

bind "tcp://127.0.0.1:#{ENV.fetch('PORT')}"
workers 2
threads 1, 1
# Requests are read by the worker's one thread, not queued in a reactor: a
# busy worker accepts no connection (the probe app's barriers rely on it).
queue_requests false
worker_timeout 120
worker_boot_timeout 120
preload_app! if ENV["PRELOAD_APP"] == "1"
rackup File.join(__dir__, "cluster.ru")

plugin :trimalloc
# What these tests check is the out-of-band trim: the watch (which trims under
# load, puma_test.rb) would return the burst first.
trimalloc min_interval: 0, watch: false
