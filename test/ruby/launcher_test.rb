# frozen_string_literal: true

require_relative "test_helper"

# The `trimalloc` executable.
class LauncherTest < Minitest::Test
  include TrimallocTest

  def trimalloc(*args, env: {})
    Open3.capture3(child_env(env: env), RUBY, EXE, *args)
  end

  def test_launcher_passes_exit_status
    _, _, st = trimalloc("run", "--", RUBY, "-e", "exit 7")
    assert_equal 7, st.exitstatus
    _, _, st = trimalloc("run", "--", "sh", "-c", "kill -TERM $$")
    assert_equal Signal.list["TERM"], st.termsig, "a signal passes through too: #{st.inspect}"
  end

  def test_launcher_runs_command_on_trimalloc
    library
    out, err, st = trimalloc("run", "--", RUBY, "-e", 'require "trimalloc"; p Trimalloc.backend')
    assert st.success?, err
    assert_equal ":trimalloc\n", out
  end

  def test_launcher_execs_in_place
    Open3.popen3(child_env, RUBY, EXE, "run", "sh", "-c", "echo $$") do |_i, o, _e, t|
      assert_equal t.pid.to_s, o.read.strip, "the command replaces the launcher (same pid)"
      assert t.value.success?
    end
  end

  def test_launcher_prepends_to_existing_ld_preload
    other = Dir["/{usr/,}lib/x86_64-linux-gnu/libm.so.6"].first || skip("no libm.so.6 to preload")
    out, = trimalloc("run", "--", "sh", "-c", 'printf %s "$LD_PRELOAD"', env: { "LD_PRELOAD" => other })
    assert_equal "#{library}:#{other}", out
    out, = trimalloc("run", "--", "sh", "-c", 'printf %s "$LD_PRELOAD"', env: { "LD_PRELOAD" => library })
    assert_equal library, out, "not added twice"
  end

  def test_launcher_reports_missing_command_and_where_it_looked
    library
    out, err, st = trimalloc("run", "--", "no-such-command-trimalloc", env: { "PATH" => "/nonexistent:/usr/bin:/bin" })
    assert_equal 127, st.exitstatus
    assert_empty out
    assert_equal "trimalloc: run: no-such-command-trimalloc: command not found in /nonexistent:/usr/bin:/bin\n", err
    _, err, st = trimalloc("run", "--", "/no/such/dir/tool")
    assert_equal [127, "trimalloc: run: /no/such/dir/tool: no such file\n"], [st.exitstatus, err]
  end

  # The same search as the Python launcher's (core/bind): the first
  # executable file in PATH order, as /bin/sh finds it.
  def test_launcher_finds_a_command_where_the_shell_does
    Dir.mktmpdir do |dir|
      a, b = %w[a b].map { |d| File.join(dir, d).tap { |p| Dir.mkdir(p) } }
      File.write(File.join(a, "tool"), "#!/bin/sh\necho a\n") # not executable: skipped
      File.write(File.join(b, "tool"), "#!/bin/sh\necho b\n")
      File.chmod(0o755, File.join(b, "tool"))
      env = { "PATH" => "#{a}:#{b}:/usr/bin:/bin" }
      out, err, st = trimalloc("run", "--", "tool", env: env)
      assert st.success?, err
      assert_equal Open3.capture2(child_env(env: env), "/bin/sh", "-c", "tool").first, out
      assert_equal "b\n", out
    end
  end

  def test_launcher_unknown_command_prints_usage_exit_2
    out, err, st = trimalloc("frobnicate")
    assert_equal 2, st.exitstatus
    assert_empty out
    assert_match(/unknown command "frobnicate"/, err)
    assert_match(/^usage: trimalloc run/, err)
    _, err, st = trimalloc
    assert_equal 2, st.exitstatus
    assert_match(/^usage:/, err)
    _, err, st = trimalloc("run", "--")
    assert_equal 2, st.exitstatus
    assert_match(/no command given/, err)
  end

  def test_launcher_help_and_version
    out, _, st = trimalloc("--help")
    assert st.success?
    assert_match(/^usage: trimalloc run/, out)
    assert_match(/trimalloc path/, out)
    %w[--version -V].each do |flag| # the same flags as the Python package's
      out, err, st = trimalloc(flag)
      assert st.success?
      assert_equal "trimalloc #{Trimalloc::VERSION}\n", out
      assert_empty err
    end
    out, err, st = trimalloc("-v")
    assert st.success?
    assert_equal "trimalloc #{Trimalloc::VERSION}\n", out
    assert_match(/-v is deprecated, use -V or --version/, err)
  end

  def test_exec_failures_raise_errno
    e = assert_raises(Errno::ENOENT) { Trimalloc.exec("no-such-command-trimalloc") }
    assert_match(/no-such-command-trimalloc/, e.message)
    Dir.mktmpdir do |dir|
      plain = File.join(dir, "not-executable")
      File.write(plain, "echo hi\n")
      assert_raises(Errno::EACCES) { Trimalloc.exec(plain) }
      _, err, st = trimalloc("run", "--", plain)
      assert_equal 126, st.exitstatus
      assert_match(/cannot execute/, err)
    end
  end

  def test_launcher_path_prints_library
    out, _, st = trimalloc("path")
    assert st.success?
    assert_equal "#{library}\n", out
  end

  def test_launcher_info_names_allocator
    out, _, st = trimalloc("info")
    assert st.success?
    assert_match(/^allocator:\s+glibc/, out)
    assert_match(/^library:\s+#{Regexp.escape(library)}$/, out)
    assert_match(/^purger:\s+none \(glibc/, out)
    out, _, st = trimalloc("run", "--", RUBY, EXE, "info")
    assert st.success?
    assert_match(/^allocator:\s+trimalloc/, out)
    assert_match(/^purger:\s+not started/, out) # nothing left to purge yet
    assert_match(/^core:\s+#{Regexp.escape(Trimalloc::VERSION)} at /, out)
    out, = trimalloc("run", "--", RUBY, EXE, "info", env: { "TRIMALLOC_BACKGROUND" => "0" })
    assert_match(/^purger:\s+off \(TRIMALLOC_BACKGROUND=0/, out)
    # the core's reading of the variable, not the CLI's own: "FALSE" is not a
    # value the core takes (it warns and keeps the purger on)
    out, = trimalloc("run", "--", RUBY, EXE, "info", env: { "TRIMALLOC_BACKGROUND" => "FALSE" })
    assert_match(/^purger:\s+not started/, out)
  end

  def test_library_path_raises_when_the_library_is_missing
    r = ruby_json(<<~'RUBY')
      require "trimalloc"
      require "trimalloc/cli"
      require "stringio"
      def File.file?(p) = p.end_with?("/libtrimalloc.so") ? false : super # no library anywhere
      e = (Trimalloc.library_path rescue $!)
      out, err = StringIO.new, StringIO.new
      codes = [Trimalloc::CLI.main(["path"], out: out, err: err), Trimalloc::CLI.main(["info"], out: out, err: err),
               Trimalloc::CLI.main(["run", "--", "true"], out: out, err: err)]
      exec_error = (Trimalloc.exec("true") rescue $!)
      puts JSON.generate(error: e.class.name, message: e.message, codes: codes, out: out.string, err: err.string,
                         exec_error: exec_error.class.name)
    RUBY
    assert_equal "Errno::ENOENT", r[:error]
    # it names where it looked: the extension's directory first
    assert_match(%r{the bundled libtrimalloc.so is missing \(looked for /\S+/trimalloc/libtrimalloc.so}, r[:message])
    assert_equal [1, 0, 1], r[:codes]
    assert_equal 2, r[:err].scan("trimalloc: ").size, r[:err]
    assert_match(/\Atrimalloc: the bundled libtrimalloc.so is missing \(looked for /, r[:err])
    assert_match(/^trimalloc: run: the bundled libtrimalloc.so is missing/, r[:err])
    assert_match(/^library: +the bundled libtrimalloc.so is missing/, r[:out])
    assert_equal "Trimalloc::Error", r[:exec_error]
  end

  def test_exec_rejects_wrong_arguments
    assert_raises(ArgumentError) { Trimalloc.exec }
    e = assert_raises(TypeError) { Trimalloc.exec("ls", 3) }
    assert_match(/Integer/, e.message)
  end
end
