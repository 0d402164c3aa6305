# frozen_string_literal: true

require_relative "test_helper"

# require "trimalloc/preload": re-exec once with the preload, same pid and
# argv, and refusals where a re-exec would not run the same program once.
# The same behaviour names as test/python/test_preload.py.
class PreloadTest < Minitest::Test
  include TrimallocTest

  SCRIPT = <<~'RUBY'
    File.open(ENV.fetch("START_LOG"), "a") { |f| f.puts Process.pid }
    require "json"
    SETUP
    require "trimalloc/preload"
    Trimalloc.preload! # a second call changes nothing, warns no more
    puts JSON.generate(pid: Process.pid, backend: Trimalloc.backend, argv: ARGV,
                       guard: ENV["TRIMALLOC_PRELOAD_GUARD"], preload: ENV["LD_PRELOAD"],
                       verbose: $VERBOSE)
  RUBY

  # Runs SCRIPT (SETUP replaced) as a file, or with -e / from stdin.
  def run_script(env: {}, preload: false, setup: "", how: :file, ruby_opts: ["-W2"])
    Dir.mktmpdir do |dir|
      log = File.join(dir, "starts")
      code = SCRIPT.sub("SETUP", setup)
      path = File.join(dir, "prog.rb")
      File.write(path, code)
      args = case how
             when :file then [*ruby_opts, path, "a b", "c"]
             when :e then [*ruby_opts, "-e", code, "--", "a b", "c"]
             when :stdin then [*ruby_opts, "-", "a b", "c"]
             end
      e = child_env(preload: preload, env: env.merge("START_LOG" => log))
      Open3.popen3(e, RUBY, *args) do |i, o, err, t|
        i.write(code) if how == :stdin
        i.close
        out = o.read
        errs = err.read
        st = t.value
        assert st.success?, "#{st.inspect}\n#{errs}"
        starts = File.readlines(log).map(&:to_i)
        return [t.pid, starts, out.lines.map { |l| JSON.parse(l, symbolize_names: true) }, errs]
      end
    end
  end

  def test_preload_reexecs_once
    pid, starts, (r, *more), err = run_script
    assert_equal [pid, pid], starts, "started twice, in the same process"
    assert_empty more
    assert_equal pid, r[:pid]
    assert_equal "trimalloc", r[:backend]
    assert_equal ["a b", "c"], r[:argv], "same command line"
    assert_equal true, r[:verbose], "interpreter options kept (-W2)"
    assert_equal "1", r[:guard]
    assert_equal library, r[:preload]
    assert_empty err
  end

  # The kernel names a process after the file it executes; the re-exec keeps
  # the name the process had (ps, top, pgrep): here a script run through its
  # #! line, named after the script, not after ruby (or "exe").
  def test_preload_keeps_the_process_name
    Dir.mktmpdir do |dir|
      prog = File.join(dir, "myserver")
      File.write(prog, <<~RUBY)
        #!#{RUBY}
        require "json"
        require "trimalloc/preload"
        puts JSON.generate(comm: File.read("/proc/self/comm").chomp, backend: Trimalloc.backend,
                           left: ENV.key?("TRIMALLOC_PRELOAD_COMM"))
      RUBY
      File.chmod(0o755, prog)
      out, err, st = Open3.capture3(child_env, prog)
      assert st.success?, err
      r = JSON.parse(out, symbolize_names: true)
      assert_equal({ comm: "myserver", backend: "trimalloc", left: false }, r)
    end
  end

  def test_preload_does_nothing_when_already_active
    pid, starts, (r,), err = run_script(preload: true)
    assert_equal [pid], starts
    assert_equal "trimalloc", r[:backend]
    assert_nil r[:guard]
    assert_empty err
  end

  def test_preload_guard_prevents_a_loop_and_warns_once
    pid, starts, (r,), err = run_script(env: { "TRIMALLOC_PRELOAD_GUARD" => "1" })
    assert_equal [pid], starts, "no re-exec when the guard is set"
    assert_equal "glibc", r[:backend]
    assert_equal 1, err.scan(/trimalloc: preload:/).size, err
    assert_match(/still not trimalloc's.*continuing on glibc/, err)
  end

  def test_preload_warns_and_continues_when_reexec_is_impossible
    setup = 'require "trimalloc"; def Trimalloc.library_path; "/nonexistent/libtrimalloc.so"; end'
    pid, starts, (r,), err = run_script(setup: setup)
    assert_equal [pid], starts
    assert_equal "glibc", r[:backend]
    assert_equal 1, err.scan(/trimalloc: preload:/).size, err
  end

  FORK = <<~'RUBY'
    require "json"
    child = fork do # a worker, as a server forks it: config.ru requires the preload
      require "trimalloc/preload"
      puts JSON.generate(pid: Process.pid, backend: Trimalloc.backend)
      $stdout.flush
      exit!(0)
    end
    Process.wait(child)
    puts JSON.generate(parent: Process.pid)
  RUBY

  def test_preload_refuses_in_a_forked_child
    out, err, st = run_ruby(FORK)
    assert st.success?, err
    child, parent = out.lines.map { |l| JSON.parse(l, symbolize_names: true) }
    assert_equal 2, out.lines.size, "nothing ran twice: #{out}"
    assert_equal "glibc", child[:backend], "the worker carries on, on glibc"
    refute_equal parent[:parent], child[:pid]
    assert_equal 1, err.scan(/trimalloc: preload:/).size, err
    assert_match(/fork of one running the same program/, err)
    assert_match(%r{config/puma\.rb}, err, "names the right place")
  end

  def test_preload_refuses_after_the_title_was_rewritten
    %w[Process.setproctitle("worker:\ busy") $0="renamed"].each do |rewrite|
      pid, starts, (r,), err = run_script(setup: rewrite)
      assert_equal [pid], starts, rewrite
      assert_equal "glibc", r[:backend]
      assert_match(/command line was rewritten/, err)
    end
  end

  # `bundle exec CMD`, CMD a Ruby script: Bundler loads it into its own
  # process after setting $0 to its path and the title to "path args" (so
  # the start command line, `ruby bundle exec CMD ...`, is gone). The line
  # runs CMD again as Bundler would exec it: ruby, $0, ARGV, under Bundler's
  # environment; once, same pid.
  BUNDLED = <<~'RUBY'
    #!RUBY
    File.open(ENV.fetch("START_LOG"), "a") { |f| f.puts Process.pid }
    require "json"
    SETUP
    require "trimalloc/preload"
    puts JSON.generate(pid: Process.pid, backend: Trimalloc.backend, argv: ARGV, script: $0,
                       bundled: ENV["BUNDLE_GEMFILE"] && defined?(Bundler) ? true : false)
  RUBY

  def run_bundled(setup: "")
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "Gemfile"), %(gem "trimalloc", path: #{ROOT.inspect}\n))
      bin = File.join(dir, "bin")
      Dir.mkdir(bin)
      prog = File.join(bin, "myprog")
      File.write(prog, BUNDLED.sub("RUBY", RUBY).sub("SETUP", setup))
      File.chmod(0o755, prog)
      log = File.join(dir, "starts")
      env = child_env(env: { "RUBYLIB" => nil, "START_LOG" => log, "BUNDLE_GEMFILE" => File.join(dir, "Gemfile"),
                             "BUNDLE_APP_CONFIG" => File.join(dir, ".bundle"), "PATH" => "#{bin}:#{ENV.fetch('PATH')}" })
      out, st = Open3.capture2e(env, "bundle", "install", "--local", "--quiet", chdir: dir)
      assert st.success?, out
      Open3.popen3(env, "bundle", "exec", "myprog", "a b", "c", chdir: dir) do |i, o, e, t|
        i.close
        out = o.read
        err = e.read
        assert t.value.success?, err
        return [t.pid, File.readlines(log).map(&:to_i), JSON.parse(out, symbolize_names: true), err, prog]
      end
    end
  end

  def test_preload_reexecs_a_command_bundle_exec_loaded
    pid, starts, r, err, prog = run_bundled
    assert_equal [pid, pid], starts, "started twice, in the same process"
    assert_equal({ pid: pid, backend: "trimalloc", argv: ["a b", "c"], script: prog, bundled: true }, r)
    assert_empty err
  end

  # The program changed ARGV (or its title) after Bundler set the title:
  # what /proc/self/cmdline shows no longer says what to run. Refused.
  def test_preload_under_bundle_exec_refuses_a_changed_command_line
    ["ARGV.shift", 'Process.setproctitle("busy")'].each do |setup|
      pid, starts, r, err, = run_bundled(setup: setup)
      assert_equal [pid], starts, setup
      assert_equal "glibc", r[:backend]
      assert_match(/command line was rewritten/, err)
    end
  end

  # The line first in a Puma config or in Sidekiq's -r file, refused there
  # (here: something set the title before the server loaded the file): the
  # warning says to use the launcher, not to put the line where it already is.
  def test_preload_refused_in_a_server_config_does_not_ask_for_the_line_there
    { "puma" => ["-C"], "sidekiq" => ["-r"] }.each do |server, opt|
      Dir.mktmpdir do |dir|
        cfg = File.join(dir, "config.rb")
        File.write(cfg, <<~RUBY)
          Process.setproctitle("renamed")
          require "trimalloc/preload"
          exit! 0
        RUBY
        _, err, st = Open3.capture3(child_env, RUBY, Gem.bin_path(server, server), *opt, cfg)
        assert st.success?, err
        warning = err[/^trimalloc: preload: .*$/]
        refute_nil warning, "#{server}: #{err}"
        assert_match(/command line was rewritten/, warning)
        assert_match(%r{the line \(#{Regexp.escape(cfg)}:2\) is already first in the server's config file}, warning)
        assert_match(/`trimalloc run -- bundle exec #{server} \.\.\.`/, warning)
        refute_match(/Puma: config|Sidekiq: the file/, warning)
      end
    end
  end

  def test_preload_refuses_inline_code_and_stdin
    %i[e stdin].each do |how|
      pid, starts, (r,), err = run_script(how: how)
      assert_equal [pid], starts, how.to_s
      assert_equal "glibc", r[:backend]
      assert_match(/-c, -e or standard input/, err)
    end
  end
end
