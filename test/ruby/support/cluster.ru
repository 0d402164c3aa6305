# frozen_string_literal: true

# config.ru of the Puma cluster tests. PRELOAD_IN=config.ru puts the preload
# line here, first, as a user reading "the first line of the program" might:
# without preload_app! every worker loads this file after the fork, so the
# line must refuse (one warning each) and the workers carry on, on glibc.
require "trimalloc/preload" if ENV["PRELOAD_IN"] == "config.ru"
require_relative "probe_app"

run ProbeApp
