# frozen_string_literal: true

# trimalloc: a memory allocator that gives memory back.
#
# The extension (trimalloc/trimalloc_ext) looks the allocator up among the
# objects already loaded into this process; when trimalloc is not the
# process's malloc, everything here drives glibc instead (malloc_trim,
# mallinfo2), and Trimalloc.backend says so.
#
# From the extension:
#   Trimalloc.active?       true when this process's malloc is trimalloc's
#   Trimalloc.backend       :trimalloc or :glibc
#   Trimalloc.trim          bytes released to the OS now (glibc: the RSS drop
#                           across malloc_trim(0))
#   Trimalloc.trim_if_due(min_interval: 1.0, min_free: 0)
#                           rate-limited trim (process-wide); nil when skipped
#   Trimalloc.free_bytes    free but resident bytes held by the allocator
#   Trimalloc.stats         Hash, keys from the core's stats field list
#   Trimalloc.rss           this process's resident set size, bytes
#   Trimalloc.core_version, Trimalloc.loaded_path (nil unless active)
#   Trimalloc::GC.enable(major_only: true, min_interval: 1.0), .disable,
#                 .enabled?, .stats
require "trimalloc/version"
require "trimalloc/trimalloc_ext"

module Trimalloc
  LIBRARY_NAME = "libtrimalloc.so"

  class << self
    def version
      VERSION
    end

    # The bundled preload library: next to the loaded extension (an installed
    # gem, or `rake compile` in a checkout), else a checkout's core/build.
    # nil when none is found.
    def library_path
      ext = $LOADED_FEATURES.find { |f| f.end_with?("/trimalloc/trimalloc_ext.so") }
      dirs = [ext && File.dirname(ext), File.join(__dir__, "trimalloc"),
              File.expand_path("../../core/build", __dir__)]
      dirs.compact.map { |d| File.join(d, LIBRARY_NAME) }.find { |p| File.file?(p) }
    end

    # Replaces this process with cmd, run with the library prepended to
    # LD_PRELOAD (cmd[0] is searched in PATH). Raises Trimalloc::Error when
    # that is impossible (the library is missing, cmd cannot be executed).
    def exec(*cmd)
      raise ArgumentError, "no command given" if cmd.empty?

      lib = library_path or raise Error, "#{LIBRARY_NAME} not found (build it with `make -C core`)"
      $stdout.flush
      $stderr.flush
      exec_preloaded(lib, cmd)
    end

    # What `require "trimalloc/preload"` does: unless trimalloc is already the
    # allocator, re-execute this command line (same pid) with the library
    # preloaded, once (TRIMALLOC_PRELOAD_GUARD). Returns true when trimalloc is
    # the allocator; otherwise warns once and returns false.
    def preload!
      return true if active?

      lib = library_path
      return preload_warn("#{LIBRARY_NAME} not found") unless lib

      $stdout.flush
      $stderr.flush
      preload_reexec(lib) == 0 ||
        preload_warn("re-exec with LD_PRELOAD=#{lib} did not make it the allocator " \
                     "(#{ENV.fetch('TRIMALLOC_PRELOAD_GUARD', '') == '' ? 'no guard' : 'guard set'})")
    rescue Error => e
      preload_warn(e.message)
    end

    private

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
