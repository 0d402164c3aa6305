# frozen_string_literal: true

# trimalloc: a memory allocator that gives memory back.
#
# The extension (trimalloc/trimalloc_ext) looks the allocator up among the
# objects already loaded into this process; when trimalloc is not the
# process's malloc, everything here drives glibc instead (malloc_trim,
# mallinfo2), and Trimalloc.backend says so.
#
# From the extension (arguments checked in trimalloc/native.rb, the C only converts):
#   Trimalloc.active?       true when this process's malloc is trimalloc's
#   Trimalloc.backend       :trimalloc or :glibc
#   Trimalloc.trim          bytes released to the OS now (glibc: the RSS drop
#                           across malloc_trim(0))
#   Trimalloc.trim_if_due(min_interval:, min_free:)
#                           rate-limited trim (process-wide); nil when skipped
#   Trimalloc.free_bytes    free but resident bytes held by the allocator
#   Trimalloc.stats         Hash, keys from the core's stats field list
#   Trimalloc.rss           this process's resident set size, bytes
#   Trimalloc.core_version, Trimalloc.loaded_path (nil unless active)
#   Trimalloc::GC.enable(major_only: true, min_interval:, min_free:), .disable,
#                 .enabled?, .stats
#   Trimalloc::Trimmer.new(every:, min_free:, min_interval:, refault_share:)
#                           one hook's policy (#event, #stats); every
#                           integration holds one (see README, "Integrations")
# The policy's defaults (every hook's) are core/bind's, one table in
# core/bind/bind_facts.c, read here as Native::DEFAULTS: trim_if_due and
# Trimmer take its :trimmer row, GC.enable its :gc row.
#   Trimalloc.policy_stats  deferred and coalesced trims, free-bytes reads
#   Trimalloc.free_source   where free_bytes comes from (:dirty, :resident,
#                           :mallinfo2, :mallinfo, :unknown)
#   Trimalloc.forked_child? a fork of a process running the same program?
#   Trimalloc::Profile      the heap profiler: start, stop, dump, top, tags
require "trimalloc/version"
require "trimalloc/trimalloc_ext"
require "trimalloc/native"

module Trimalloc
  LIBRARY_NAME = "libtrimalloc.so"
  private_constant :LIBRARY_NAME

  class << self
    def version
      VERSION
    end

    # The bundled preload library: next to the loaded extension (an installed
    # gem, or `rake compile` in a checkout), else a checkout's core/build.
    # Raises Errno::ENOENT naming the places it looked when there is none (a
    # gem installed without its native part): a path that does not exist
    # would only fail later, in the dynamic loader of another process.
    def library_path
      ext = $LOADED_FEATURES.find { |f| f.end_with?("/trimalloc/trimalloc_ext.so") }
      dirs = [ext && File.dirname(ext), File.join(__dir__, "trimalloc"),
              File.expand_path("../../core/build", __dir__)]
      paths = dirs.compact.uniq.map { |d| File.join(d, LIBRARY_NAME) }
      paths.find { |p| File.file?(p) } or
        raise Errno::ENOENT, "the bundled #{LIBRARY_NAME} is missing (looked for #{paths.join(', ')}; " \
                             "build it with `rake compile`, or reinstall the gem)"
    end

    # Replaces this process with cmd, run with the library prepended to
    # LD_PRELOAD (cmd[0] is searched in PATH). Raises what Kernel#exec
    # raises when cmd cannot be executed (Errno::ENOENT, Errno::EACCES, ...),
    # and Trimalloc::Error when the library is missing.
    def exec(*cmd)
      raise ArgumentError, "no command given" if cmd.empty?

      lib = begin
        library_path
      rescue Errno::ENOENT => e
        raise Error, e.message.sub(/\A.*? - /, "") # without strerror: the message says it
      end
      $stdout.flush
      $stderr.flush
      exec_preloaded(lib, cmd)
    end

    # Where the preload line belongs, said when it is refused.
    PRELOAD_HINT = "put `require \"trimalloc/preload\"` first in the server's config file " \
                   "(Puma: config/puma.rb, before preload_app!; Sidekiq: the file given to -r), " \
                   "or start the program with `trimalloc run --`"

    # What `require "trimalloc/preload"` does: unless trimalloc is already the
    # allocator, re-execute the program (same pid, the command line it was
    # started with) with the library preloaded, once (TRIMALLOC_PRELOAD_GUARD).
    # Under `bundle exec` (Bundler loads a Ruby command in its own process,
    # after rewriting $0 and the title), the command Bundler loaded is run
    # again, as Bundler would exec it. Refused in a fork of a process running
    # the same program (a server's worker), when the command line was
    # rewritten ($0=, setproctitle), and for -e or standard input. Returns
    # true when trimalloc is the allocator; otherwise warns once and returns
    # false.
    def preload!
      return true if active?

      lib = begin
        library_path
      rescue Errno::ENOENT => e
        return preload_warn(e.message.sub(/\A.*? - /, ""))
      end

      $stdout.flush
      $stderr.flush
      argv, title = bundle_exec_load
      script = argv ? $0 : Process.argv0
      code, reason = preload_reexec(lib, script, !argv && $0 != Process.argv0, argv, title)
      return true if code == Native::PRELOAD[:active]

      preload_warn(code == Native::PRELOAD[:guard] ? reason : "#{reason}; #{preload_hint(caller_locations)}")
    rescue SystemCallError => e
      preload_warn("re-exec with LD_PRELOAD failed (#{e.message})")
    end

    private

    # `bundle exec CMD` with CMD a Ruby script: Bundler loads it in its own
    # process, after setting $0 to its path and the title to "path args",
    # with RUBYOPT loading bundler/setup. Running ruby with $0 and ARGV, in
    # that environment, runs the same program again (it is how Bundler runs a
    # command it does not load). [argv, the title Bundler set], or nil when
    # this process is not one Bundler's exec loaded a command into.
    def bundle_exec_load
      return unless defined?(::Bundler::CLI::Exec) && ENV["RUBYOPT"].to_s.include?("bundler/setup")
      return unless $0 != Process.argv0 && File.file?($0)

      [[RbConfig.ruby, $0, *ARGV], "#{$0} #{ARGV.join(' ')}".strip]
    end

    # Servers that load a file of the user's before anything else, by the
    # frame that loads it: a refused line there is already where
    # PRELOAD_HINT would put it.
    SERVER_LOADERS = { %r{/puma/dsl\.rb\z} => "puma", %r{/sidekiq/cli\.rb\z} => "sidekiq" }.freeze
    private_constant :SERVER_LOADERS

    # What to do about a refusal, for the line at `locations` (the caller of
    # preload!): PRELOAD_HINT, unless the line already is in the server's
    # config file, where only the launcher can do better.
    def preload_hint(locations)
      own = File.dirname(__FILE__)
      frames = locations.reject { |l| l.path.start_with?(own, "<internal:") || l.path.include?("/rubygems/") }
      line = frames[0]
      by = line && frames.find { |l| l.path != line.path } # a C method's frame bears its caller's path
      server = by && SERVER_LOADERS.find { |re, _| re.match?(by.path) }&.last
      return PRELOAD_HINT unless server

      "the line (#{line.path}:#{line.lineno}) is already first in the server's config file, so " \
        "start the server with `trimalloc run --` instead (e.g. `trimalloc run -- bundle exec #{server} ...`)"
    end

    def preload_warn(why)
      unless @preload_warned
        @preload_warned = true
        warn "trimalloc: preload: #{why}; continuing on #{backend}"
      end
      false
    end
  end
end

require "trimalloc/report"
require "trimalloc/profile"
