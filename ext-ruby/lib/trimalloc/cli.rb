# frozen_string_literal: true

require "trimalloc"

module Trimalloc
  # The `trimalloc` executable. main returns the exit status (`run` does not
  # return: it becomes the command, so the command's status is the status).
  module CLI
    USAGE = <<~TEXT
      usage: trimalloc run [--profile DIR] [--] CMD [ARGS...]
                                               run CMD with trimalloc as its allocator (LD_PRELOAD);
                                               --profile DIR: sample its allocations from its start
                                               (TRIMALLOC_PROF=1), profiles in DIR/<CMD's name>.<pid>.*.pb.gz;
                                               its Rubies load the gem's extension first (RUBYOPT) for Ruby frames
             trimalloc path                    print the path of the bundled libtrimalloc.so
             trimalloc info                    which allocator this process runs on, and the library
             trimalloc --help | --version (-V)
    TEXT

    module_function

    def main(argv, out: $stdout, err: $stderr)
      cmd, *rest = argv
      case cmd
      when "run" then run(rest, err)
      when "path" then path(out, err)
      when "info" then info(out)
      when "-h", "--help", "help"
        out.print USAGE
        0
      when "-V", "--version"
        out.puts "trimalloc #{VERSION}"
        0
      when "-v"
        err.puts "trimalloc: -v is deprecated, use -V or --version (as the Python package does)"
        out.puts "trimalloc #{VERSION}"
        0
      else
        err.puts "trimalloc: unknown command #{cmd.inspect}" if cmd
        err.print USAGE
        2
      end
    end

    def run(args, err)
      profile, args = run_options(args, err)
      return args if args.is_a?(Integer)
      if args.empty?
        err.puts "trimalloc: run: no command given"
        err.print USAGE
        return 2
      end
      begin
        if profile
          Trimalloc.send(:profile_env, profile, args.first)
          ruby_frames_hook
        end
      rescue SystemCallError => e
        err.puts "trimalloc: run: --profile #{profile.inspect}: #{e.message.sub(/ @ .*| - .*/, '')}"
        return 1
      end
      begin
        Trimalloc.exec(*args)
      rescue Errno::ENOENT
        where = args.first.include?("/") ? "no such file" : "command not found in #{Trimalloc.send(:search_path)}"
        err.puts "trimalloc: run: #{args.first}: #{where}"
        127
      rescue Errno::EACCES, Errno::ENOEXEC => e
        err.puts "trimalloc: run: #{args.first}: cannot execute (#{e.message})"
        126
      rescue SystemCallError, Error => e
        err.puts "trimalloc: run: #{e.message}"
        1
      end
    end

    # Every Ruby the command runs loads the extension first (RUBYOPT), so
    # that its samples carry Ruby frames whether or not it requires
    # trimalloc. RUBYOPT cannot hold a path with a space: then it is not.
    def ruby_frames_hook
      hook = File.expand_path("profile_hook.rb", __dir__)
      return if hook.match?(/\s/) || ENV["RUBYOPT"].to_s.include?(hook)

      ENV["RUBYOPT"] = ["-r#{hook}", ENV.fetch("RUBYOPT", nil)].compact.join(" ")
    end

    # [--profile DIR or nil, the command], or [nil, exit status] on a bad option.
    def run_options(args, err)
      profile = nil
      args = args.dup
      while (a = args.first)
        if a == "--"
          args.shift
          break
        elsif a == "--profile" || a.start_with?("--profile=")
          args.shift
          if a == "--profile"
            if args.empty?
              err.puts "trimalloc: run: --profile needs a directory: trimalloc run --profile DIR -- CMD"
              return [nil, 2]
            end
            a = "--profile=#{args.shift}"
          end
          profile = a.delete_prefix("--profile=")
          if profile.empty?
            err.puts "trimalloc: run: --profile needs a directory, got ''"
            return [nil, 2]
          end
        else
          break
        end
      end
      [profile, args]
    end

    def path(out, err)
      lib = Trimalloc.library_path
      unless lib
        err.puts "trimalloc: #{LIBRARY_NAME} not found"
        return 1
      end
      out.puts lib
      0
    end

    def info(out)
      out.puts "trimalloc #{VERSION}"
      out.puts "library:    #{Trimalloc.library_path || 'not found'}"
      out.puts "allocator:  #{Trimalloc.backend} (this process)"
      out.puts "core:       #{Trimalloc.core_version} at #{Trimalloc.loaded_path}" if Trimalloc.active?
      out.puts "purger:     #{purger_state}"
      out.puts "LD_PRELOAD: #{ENV.fetch('LD_PRELOAD', '')}"
      0
    end

    # Whether the core's background purger runs in this process.
    def purger_state
      return "none (glibc: memory goes back only when something trims)" unless Trimalloc.active?
      return "running (returns what stays free for the purge delay)" if Trimalloc.stats[:background].to_i == 1
      if %w[0 false no off].include?(ENV.fetch("TRIMALLOC_BACKGROUND", "1").strip.downcase)
        return "off (TRIMALLOC_BACKGROUND=0: only allocator calls and trims purge)"
      end
      "not started (starts when 4 MiB are left to purge)"
    end
  end
end
