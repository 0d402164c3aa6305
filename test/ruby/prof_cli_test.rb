# frozen_string_literal: true

# `trimalloc top` and `trimalloc flame`, and the reader behind
# Trimalloc::Profile.top (Trimalloc::Native.prof_top, private), on a profile of known
# contents written by the core's own encoder (test/prof/make_profile.c, built
# here; its comment lists what it holds).
require_relative "test_helper"
require "rexml/document"
require "zlib"

class ProfCliTest < Minitest::Test
  NATIVE = Trimalloc.const_get(:Native) # private: the readers the CLI calls

  include TrimallocTest

  TOTAL_INUSE = (28 * MiB) + (MiB / 2) + 1000
  RB_STACK = "ReportJob#perform (app/jobs/report_job.rb:3);Report#render (app/models/report.rb:7);" \
             "String#*;rb_str_buf_new;ruby_xmalloc;malloc"

  def self.profile
    @profile ||= begin
      dir = Dir.mktmpdir("prof_cli")
      Minitest.after_run { FileUtils.rm_rf(dir) }
      exe = File.join(dir, "make_profile")
      core = File.join(ROOT, "core")
      ok = system("cc", "-std=c11", "-D_GNU_SOURCE", "-I", core, File.join(ROOT, "test", "prof", "make_profile.c"),
                  File.join(core, "pprof.c"), File.join(core, "prim", "linux.c"), "-o", exe)
      raise "cannot build test/prof/make_profile.c" unless ok

      out = File.join(dir, "known.pb.gz")
      system(exe, out) or raise "make_profile failed"
      out
    end
  end

  def profile
    self.class.profile
  end

  def cli(*args)
    Open3.capture3(child_env, RUBY, EXE, *args.map(&:to_s))
  end

  def assert_usage_error(result, *words)
    out, err, st = result
    assert_equal 2, st.exitstatus, err
    assert_equal "", out
    lines = err.lines
    assert_equal 1, lines.size, err
    assert lines[0].start_with?("trimalloc: error: "), err
    words.each { |w| assert_includes lines[0], w }
  end

  def assert_file_error(result, path, *words)
    _out, err, st = result
    assert_equal 1, st.exitstatus, err
    assert_equal 1, err.lines.size, err
    assert err.start_with?("trimalloc: error: #{path}: "), err
    words.each { |w| assert_includes err, w }
  end

  def test_top_table
    out, err, st = cli("top", profile)
    assert st.success?, err
    lines = out.lines.map(&:chomp)
    assert lines[0].start_with?("#{profile}: 7 samples, reason dump"), lines[0]
    assert lines[1].start_with?("live: 28.5 MiB in 30 objects"), lines[1]
    head = lines.index { |l| l.split == %w[live % objects allocated where] }
    rows = lines[(head + 1)..]
    assert_equal 6, rows.size, out
    assert_equal %w[16.0 MiB 56.1%], rows[0].split[0, 3]
    assert rows[1].end_with?("[ReportJob] rb_str_buf_new (libruby-3.1.so.3.1) < String#* (<internal:string>) < " \
                             "Report#render (app/models/report.rb:7) < ReportJob#perform (app/jobs/report_job.rb:3)"),
           rows[1]
    assert_equal %w[9.0 MiB 31.6%], rows[1].split[0, 3], "the two ReportJob samples summed"
    assert_includes rows[3], "[OtherJob]"
    refute_includes rows[1], "ruby_xmalloc", "allocator frames are left out"
  end

  def test_top_n_and_by
    out, _err, st = cli("top", profile, "-n", "1", "--by", "alloc_space")
    assert st.success?
    assert_includes out, "top 1 of 6 call paths by alloc_space"
    assert_includes out, "in the other 5 call paths"
    out, = cli("top", profile, "-n0", "--by=alloc_objects")
    assert_includes out, "json.loads (/usr/lib/python3.11/json/__init__.py:346)"
  end

  def test_top_bad_arguments
    assert_usage_error cli("top"), "no profile FILE"
    assert_usage_error cli("top", profile, "-n", "many"), "-n", '"many"'
    assert_usage_error cli("top", profile, "--by", "cpu"), "--by", "inuse_space", '"cpu"'
    assert_usage_error cli("top", profile, "--frobnicate"), "unknown option", "--frobnicate"
    assert_usage_error cli("top", profile, profile), "one FILE only"
  end

  def test_top_bad_files
    Dir.mktmpdir do |dir|
      missing = File.join(dir, "missing.pb.gz")
      assert_file_error cli("top", missing), missing, "cannot open: No such file or directory"
      text = File.join(dir, "notes.txt")
      File.write(text, "this is not a profile\n")
      assert_file_error cli("top", text), text, "not a profile"
      cut = File.join(dir, "cut.pb.gz")
      data = File.binread(profile)
      File.binwrite(cut, data[0, data.bytesize / 2])
      assert_file_error cli("top", cut), cut, "gzip"
      plain = File.join(dir, "plain.pb")
      File.binwrite(plain, Zlib.gunzip(data))
      assert_equal cli("top", profile)[0].lines.drop(1), cli("top", plain)[0].lines.drop(1), "plain protobuf reads too"
    end
  end

  def test_flame_svg
    Dir.mktmpdir do |dir|
      svg = File.join(dir, "flame.svg")
      out, err, st = cli("flame", profile, "-o", svg)
      assert st.success?, err
      assert_equal "wrote #{svg} (flame graph of inuse_space)\n", out
      doc = REXML::Document.new(File.read(svg)) # raises on malformed XML
      assert_equal "svg", doc.root.name
      assert_nil REXML::XPath.first(doc, "//script"), "self-contained"
      titles = REXML::XPath.match(doc, "//title").map(&:text)
      assert_includes titles, "all (28.5 MiB, 100.00%)"
      cxx = "std::vector<std::pair<int, char*> >::_M_realloc_insert<&>(\"x\", 'y') (/usr/bin/app)"
      assert(titles.any? { |t| t.start_with?("#{cxx} (3.0 MiB") }, "the full name, unescaped by the parser")
      widths = REXML::XPath.match(doc, "//g").to_h do |g|
        [g.elements["title"].text.sub(/ \([^()]*\)\z/, ""), g.elements["rect"].attributes["width"].to_f]
      end
      assert_in_delta 1180, widths["all"], 0.1
      assert_in_delta 1180.0 * ((9 * MiB) + (MiB / 2)) / TOTAL_INUSE, widths["ReportJob#perform (app/jobs/report_job.rb:3)"],
                      0.1
    end
  end

  def test_flame_collapsed
    out, err, st = cli("flame", profile, "--collapsed", "-o", "-")
    assert st.success?, err
    stacks = out.lines.to_h { |l| l.chomp.rpartition(" ").then { |s, _, v| [s, Integer(v)] } }
    assert_equal out.lines.size, stacks.size, "one line per distinct stack"
    assert_equal TOTAL_INUSE, stacks.values.sum, "the lines sum to the total inuse_space"
    assert_equal (9 * MiB) + (MiB / 2), stacks[RB_STACK], "root first; tags merged"
  end

  def test_flame_bad_arguments
    Dir.mktmpdir do |dir|
      assert_usage_error cli("flame", profile), "no output", "-o"
      assert_usage_error cli("flame", profile, "-o"), "-o needs a value"
      assert_usage_error cli("flame", profile, "-o", File.join(dir, "x.svg"), "--colapsed"), "unknown option"
      assert_file_error cli("flame", profile, "-o", File.join(dir, "x.svg"), "--type", "cpu"), profile,
                        "no sample type 'cpu'"
      bad_out = File.join(dir, "no", "x.svg")
      assert_file_error cli("flame", profile, "-o", bad_out), bad_out, "cannot write: No such file or directory"
    end
  end

  def test_prof_top_rows
    rows = NATIVE.prof_top(profile, nil, 0)
    assert_equal [16 * MiB, 9 * MiB, 3 * MiB, MiB / 2, 1000, 0], rows.map { |r| r[:inuse_space] }
    assert_equal %i[inuse_space inuse_objects alloc_space alloc_objects frames tag].sort, rows[0].keys.sort
    # leaf first; "function (file:line)", or "function" (native frames, a Ruby C method)
    assert_equal ["malloc", "ruby_xmalloc", "rb_str_buf_new", "String#*", "Report#render (app/models/report.rb:7)",
                  "ReportJob#perform (app/jobs/report_job.rb:3)"], rows[1][:frames]
    assert_equal ["ReportJob", 9, 12 * MiB, 12], rows[1].values_at(:tag, :inuse_objects, :alloc_space, :alloc_objects)
    assert_nil rows[2][:tag]
    assert_equal [20, 12], NATIVE.prof_top(profile, "alloc_objects", 2).map { |r| r[:alloc_objects] }
  end

  def test_prof_top_errors
    assert_raises(ArgumentError) { NATIVE.prof_top(profile, "cpu", 1) }
    e = assert_raises(Errno::ENOENT) { NATIVE.prof_top("/nonexistent/p.pb.gz", nil, 1) }
    assert_includes e.message, "/nonexistent/p.pb.gz"
    e = assert_raises(ArgumentError) { NATIVE.prof_top(__FILE__, nil, 1) }
    assert_includes e.message, "#{__FILE__}: not a profile"
    assert_raises(ArgumentError) { NATIVE.prof_top(profile, nil, -1) }
    assert_raises(TypeError) { NATIVE.prof_top(profile, 3, 1) }
    assert_raises(Errno::ENOENT) { NATIVE.prof_flame(profile, "/nonexistent/x.svg", nil, false) }
  end
end
