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
             trimalloc top FILE [-n N] [--by TYPE]
                                               the call paths holding the most memory in a heap
                                               profile (.pb.gz from Trimalloc::Profile.dump, or any
                                               pprof heap profile); N rows (10, 0: all), TYPE one of
                                               inuse_space (default), inuse_objects, alloc_space,
                                               alloc_objects
             trimalloc flame FILE -o OUT [--collapsed] [--type TYPE]
                                               the profile as a flame graph: a self-contained SVG,
                                               or collapsed stacks for flamegraph.pl/speedscope
                                               ("root;...;leaf value"); -o - is stdout
             trimalloc path                    print the path of the bundled libtrimalloc.so
             trimalloc info                    which allocator this process runs on, and the library
             trimalloc --help | --version (-V)
    TEXT

    module_function

    def main(argv, out: $stdout, err: $stderr)
      cmd, *rest = argv
      case cmd
      when "run" then run(rest, err)
      when "top" then top(rest, out, err)
      when "flame" then flame(rest, out, err)
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
    # trimalloc; only a Ruby of the version that runs this (see
    # profile_hook.rb). RUBYOPT cannot hold a path with a space: then it is not.
    def ruby_frames_hook
      hook = File.expand_path("profile_hook.rb", __dir__)
      return if hook.match?(/\s/) || ENV["RUBYOPT"].to_s.include?(hook)

      ENV["RUBYOPT"] = ["-r#{hook}", ENV.fetch("RUBYOPT", nil)].compact.join(" ")
      ENV["TRIMALLOC_PROFILE_RUBY"] = "#{RUBY_ENGINE} #{RUBY_VERSION} #{RUBY_PLATFORM}"
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

    SAMPLE_TYPES = Native::SAMPLE_TYPES.map(&:to_s).freeze # core/bind's

    # A usage error: its message, exit status 2.
    class UsageError < StandardError; end

    # FILE and the options of top/flame: --opt VALUE, --opt=VALUE, -nVALUE.
    def options(cmd, args, takes_value, flags)
      file = nil
      opts = {}
      args = args.dup
      until args.empty?
        a = args.shift
        if a == "--"
          file ||= args.shift
          raise UsageError, "#{cmd}: unexpected argument #{args.first.inspect}" unless args.empty?
          break
        end
        name, eq, value = a.partition("=")
        name, eq, value = a[0, 2], "=", a[2..] if a.length > 2 && !a.start_with?("--") && takes_value.key?(a[0, 2])
        if takes_value.key?(name)
          if eq.empty?
            raise UsageError, "#{cmd}: #{name} needs a value" if args.empty?
            value = args.shift
          end
          opts[takes_value[name]] = value
        elsif flags.key?(a)
          opts[flags[a]] = true
        elsif a.start_with?("-") && a != "-"
          raise UsageError, "#{cmd}: unknown option #{a.inspect} (see trimalloc --help)"
        elsif file
          raise UsageError, "#{cmd}: unexpected argument #{a.inspect} (one FILE only)"
        else
          file = a
        end
      end
      raise UsageError, "#{cmd}: no profile FILE given" unless file
      [file, opts]
    end

    def top(args, out, err)
      return help(out) if %w[-h --help].include?(args.first)
      file, opts = options("top", args, { "-n" => :n, "--by" => :by }, {})
      n = opts.fetch(:n, "10")
      raise UsageError, "top: -n wants a number of rows >= 0 (0: all), not #{n.inspect}" unless n.match?(/\A\d+\z/)
      by = opts.fetch(:by, "inuse_space")
      unless SAMPLE_TYPES.include?(by)
        raise UsageError, "top: --by wants one of #{SAMPLE_TYPES.join(', ')}, not #{by.inspect}"
      end
      out.print Native.prof_top_text(file, by, Integer(n, 10))
      0
    rescue UsageError => e
      err.puts "trimalloc: error: #{e.message}"
      2
    rescue ArgumentError, SystemCallError => e
      err.puts "trimalloc: error: #{reader_message(e)}"
      1
    end

    def flame(args, out, err)
      return help(out) if %w[-h --help].include?(args.first)
      file, opts = options("flame", args, { "-o" => :out, "--output" => :out, "--type" => :type },
                           { "--collapsed" => :collapsed })
      raise UsageError, "flame: no output given: -o OUT.svg (or -o - for stdout)" if opts[:out].to_s.empty?
      out.flush
      $stdout.flush # "-o -": the C code writes to file descriptor 1
      Native.prof_flame(file, opts[:out], opts[:type], opts[:collapsed] || false)
      unless opts[:out] == "-"
        out.puts "wrote #{opts[:out]} (#{opts[:collapsed] ? 'collapsed stacks' : 'flame graph'} of " \
                 "#{opts[:type] || 'inuse_space'})"
      end
      0
    rescue UsageError => e
      err.puts "trimalloc: error: #{e.message}"
      2
    rescue ArgumentError, SystemCallError => e
      err.puts "trimalloc: error: #{reader_message(e)}"
      1
    end

    # The reader's line, "FILE: what: strerror" for an Errno as for the rest
    # (Ruby puts strerror first: "No such file or directory - FILE: what").
    def reader_message(error)
      return error.message unless error.is_a?(SystemCallError)

      error.message.sub(/\A(.*?) - (.*)\z/m, '\2: \1')
    end

    def help(out)
      out.print USAGE
      0
    end

    def path(out, err)
      out.puts Trimalloc.library_path
      0
    rescue Errno::ENOENT => e
      err.puts "trimalloc: #{e.message.sub(/\A.*? - /, '')}"
      1
    end

    def library_or_why
      Trimalloc.library_path
    rescue Errno::ENOENT => e
      e.message.sub(/\A.*? - /, "")
    end

    def info(out)
      out.puts "trimalloc #{VERSION}"
      out.puts "library:    #{library_or_why}"
      out.puts "allocator:  #{Trimalloc.backend} (this process)"
      out.puts "core:       #{Trimalloc.core_version} at #{Trimalloc.loaded_path}" if Trimalloc.active?
      out.puts "purger:     #{Native.purger_state}"
      out.puts "LD_PRELOAD: #{ENV.fetch('LD_PRELOAD', '')}"
      0
    end
  end
end
