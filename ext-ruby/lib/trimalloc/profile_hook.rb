# frozen_string_literal: true

# Loaded into every Ruby that `trimalloc run --profile` starts (RUBYOPT
# -r<this file's path>), before the program: the extension registers the
# heap profiler's Ruby frames hook when it loads, so the profiles name Ruby
# methods even in a program that never requires trimalloc. Only the
# extension is loaded, by its path next to this file (a bundle that does not
# list trimalloc cannot hide it); a later `require "trimalloc"` finds it
# loaded.
#
# Only into the Ruby the extension was built for (the one that ran
# `trimalloc run`, TRIMALLOC_PROFILE_RUBY): loaded into another, it would
# bring a second libruby into the process.
if ENV["TRIMALLOC_PROFILE_RUBY"] == "#{RUBY_ENGINE} #{RUBY_VERSION} #{RUBY_PLATFORM}"
  begin
    require_relative "trimalloc_ext"
  rescue LoadError => e
    warn "trimalloc: run --profile: no Ruby frames in the profiles (#{e.message})"
  end
end
