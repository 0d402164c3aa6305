# frozen_string_literal: true

module Trimalloc
  # TRIMALLOC_VERSION of core/trimalloc.h, the one place the version is
  # written: read here (and so by the gemspec), by setup.py for the Python
  # package, and compiled into both extensions. The gem carries core/ (it
  # builds it).
  VERSION = File.read(File.expand_path("../../../core/trimalloc.h", __dir__))
                .slice(/#define TRIMALLOC_VERSION "([^"]+)"/, 1).freeze
end
