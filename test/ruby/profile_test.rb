# frozen_string_literal: true

require_relative "test_helper"

# Trimalloc::Profile: the heap profiler's Ruby frames, in child rubies run on
# trimalloc (LD_PRELOAD). Each child is a script file (so its Ruby frames
# have a path to check), run with TRIMALLOC_PROF_PREFIX in a temporary
# directory; it prints JSON on its last line. Blocks of R bytes and more are
# recorded exactly (weight 1), so the tests that count blocks use blocks
# above the interval and know the exact answer.
class ProfileTest < Minitest::Test
  include TrimallocTest

  # Loaded first in every child: exact-size mallocs through Fiddle, with the
  # GVL (need_gvl: true) or without it (Fiddle releases the GVL around a
  # foreign call by default), and a native thread that is not a Ruby thread.
  PRELUDE = <<~'RUBY'
    require "trimalloc"
    require "json"
    require "fiddle"
    LIBC = Fiddle::Handle::DEFAULT
    MALLOC_GVL = Fiddle::Function.new(LIBC["malloc"], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_VOIDP, need_gvl: true)
    MALLOC_NOGVL = Fiddle::Function.new(LIBC["malloc"], [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_VOIDP)
    FREE = Fiddle::Function.new(LIBC["free"], [Fiddle::TYPE_VOIDP], Fiddle::TYPE_VOID, need_gvl: true)
    # pthread_create(&t, NULL, malloc, size): the new thread's start routine
    # is malloc itself: a native thread, never a Ruby one, that allocates.
    PTHREAD_CREATE = Fiddle::Function.new(LIBC["pthread_create"],
                                          [Fiddle::TYPE_VOIDP, Fiddle::TYPE_VOIDP, Fiddle::TYPE_VOIDP, Fiddle::TYPE_SIZE_T],
                                          Fiddle::TYPE_INT, need_gvl: true)
    PTHREAD_JOIN = Fiddle::Function.new(LIBC["pthread_join"], [Fiddle::TYPE_SIZE_T, Fiddle::TYPE_VOIDP], Fiddle::TYPE_INT)
    def native_thread_malloc(size)
      t = Fiddle::Pointer.malloc(8, Fiddle::RUBY_FREE)
      ret = Fiddle::Pointer.malloc(8, Fiddle::RUBY_FREE)
      raise "pthread_create failed" unless PTHREAD_CREATE.call(t, nil, LIBC["malloc"], size).zero?
      raise "pthread_join failed" unless PTHREAD_JOIN.call(t[0, 8].unpack1("Q"), ret).zero?
      ret[0, 8].unpack1("Q")
    end
    def report(h) = puts(JSON.generate(h))
  RUBY

  KiB = 1 << 10

  # Line n of a test's code in the script (after PRELUDE and a newline).
  def line(n)
    PRELUDE.lines.size + 1 + n
  end

  # Runs `code` (after PRELUDE) as a script on trimalloc; returns the JSON
  # of its last stdout line (symbol keys), the script's path and the
  # directory of its dumps.
  def profile_run(code, env: {}, timeout: 240)
    dir = Dir.mktmpdir("trimalloc-profile")
    @dirs << dir
    script = File.join(dir, "prof_app.rb")
    File.write(script, "#{PRELUDE}\n#{code}")
    e = child_env(preload: true, env: { "TRIMALLOC_PROF_PREFIX" => File.join(dir, "prof") }.merge(env))
    out = err = st = nil
    Timeout.timeout(timeout) { out, err, st = Open3.capture3(e, RUBY, script) }
    assert st.success?, "child ruby failed (#{st.inspect}):\n#{err}\n#{out}"
    [JSON.parse(out.lines.last, symbolize_names: true), script, dir]
  end

  def setup
    @dirs = []
  end

  def teardown
    @dirs.each { |d| FileUtils.rm_rf(d) }
  end

  # A frame of Ruby code: "Class#method (file:line)", "Module.method",
  # "<main>", or a key never named. Native frames are C function names,
  # "??", or an object's path.
  def ruby_frame?(frame)
    frame.match?(/\A(?:[A-Z][\w:]*[#.]\S|<main>|block |\[interpreter frame)/)
  end

  # The rows whose blocks are `size` bytes (recorded exactly: >= R), as the
  # allocator rounds them (up to a page more).
  def rows_of(rows, size)
    rows.select do |r|
      r[:inuse_objects].positive? && (size..size + 4096).cover?(r[:inuse_space] / r[:inuse_objects]) &&
        (r[:inuse_space] % r[:inuse_objects]).zero?
    end
  end

  # Index of the first frame that starts with `prefix`, or nil.
  def frame_at(frames, prefix)
    frames.index { |f| f.start_with?(prefix) }
  end

  def test_string_times_is_named_with_the_ruby_method_that_called_it
    res, script, = profile_run(<<~'RUBY')
      KEEP = []
      def build_strings
        16.times { KEEP << "x" * 1_000_000 }
      end
      Trimalloc::Profile.start(interval: 256 * 1024)
      build_strings
      report(rows: Trimalloc::Profile.top(0), stats: Trimalloc::Profile.frame_stats)
    RUBY
    rows = res[:rows].select { |r| frame_at(r[:frames], "String#*") }
    refute_empty rows, "no call path names String#*: #{res[:rows].first(5).map { |r| r[:frames] }}"
    rows.each do |r|
      f = r[:frames]
      star = frame_at(f, "String#*")
      caller = frame_at(f, "Object#build_strings")
      refute_nil caller, "String#* without its caller: #{f}"
      assert_operator caller, :>, star, "the Ruby method is String#*'s caller: #{f}"
      assert_includes f[caller], "(#{script}:#{line(3)})", "the method's file and line: #{f}"
      assert_operator star, :>, 0, "native frames (the allocation inside String#*) come first: #{f}"
      refute ruby_frame?(f[0]), "the leaf is a native frame: #{f}"
    end
    # 16 strings of 1_000_000 bytes (+1 for the NUL): each above R, recorded
    # exactly, as the allocator rounds them (to 1 MiB here). A small block
    # that String#* allocates on another path (a GC it triggers, say) may be
    # sampled too, weighted R / size: such rows (under 1 MB an object) are
    # left out (the full suite on a loaded machine once counted 2747 objects).
    big = rows.select { |r| r[:inuse_objects].positive? && r[:inuse_space] / r[:inuse_objects] >= 1_000_000 }
    assert_equal 16, big.sum { |r| r[:inuse_objects] }, rows.inspect
    assert_includes 16_000_016..(16 << 20), big.sum { |r| r[:inuse_space] }, rows.inspect
    assert_operator res[:stats][:samples], :>=, 16
  end

  def test_json_generate_is_named_with_the_ruby_method_that_called_it
    res, script, = profile_run(<<~'RUBY')
      KEEP = []
      DATA = Array.new(20_000) { |i| { "id" => i, "name" => "n" * 40, "tags" => %w[a b c] } }
      def json_site
        8.times { KEEP << JSON.generate(DATA) }
      end
      Trimalloc::Profile.start(interval: 128 * 1024)
      json_site
      report(rows: Trimalloc::Profile.top(0), json: JSON::VERSION)
    RUBY
    rows = res[:rows].select { |r| r[:frames].any? { |f| f.start_with?("JSON") } && frame_at(r[:frames], "Object#json_site") }
    refute_empty rows, "no call path through JSON from json_site: #{res[:rows].first(5).map { |r| r[:frames] }}"
    rows.each do |r|
      f = r[:frames]
      json = frame_at(f, "JSON")
      site = frame_at(f, "Object#json_site")
      assert_operator site, :>, json, "json_site calls JSON: #{f}"
      assert_includes f[site], "(#{script}:#{line(4)})", f.inspect
      refute ruby_frame?(f[0]), "the leaf is a native frame: #{f}"
    end
    # each document is about 1.3 MB; the 8 kept ones are live
    assert_operator rows.sum { |r| r[:inuse_space] }, :>=, 8 * 1_000_000, rows.inspect
  end

  # A sample taken on a thread that does not hold the GVL (a blocking
  # region of a C extension; a native thread that is not Ruby's) carries no
  # Ruby frame, and the same malloc with the GVL carries them.
  def test_samples_without_the_gvl_have_no_ruby_frames
    res, = profile_run(<<~'RUBY')
      KEEP = []
      def with_gvl_site = 8.times { KEEP << MALLOC_GVL.call(7 << 20) }
      def without_gvl_site = 8.times { KEEP << MALLOC_NOGVL.call(3 << 20) }
      def native_thread_site = 8.times { KEEP << native_thread_malloc(5 << 20) }
      Trimalloc::Profile.start(interval: 256 * 1024)
      with_gvl_site
      without_gvl_site
      native_thread_site
      report(rows: Trimalloc::Profile.top(0), stats: Trimalloc::Profile.frame_stats)
    RUBY
    rows = res[:rows]
    with = rows_of(rows, 7 << 20)
    without = rows_of(rows, 3 << 20)
    native = rows_of(rows, 5 << 20)
    [[with, "with the GVL"], [without, "without the GVL"], [native, "on a native thread"]].each do |rs, what|
      assert_equal 8, rs.sum { |r| r[:inuse_objects] }, "8 blocks #{what}: #{rs}"
    end
    with.each do |r|
      assert frame_at(r[:frames], "Object#with_gvl_site"), "with the GVL the Ruby caller is there: #{r[:frames]}"
      assert frame_at(r[:frames], "Fiddle::Function#call"), r[:frames].inspect
    end
    (without + native).each do |r|
      assert_empty r[:frames].select { |f| ruby_frame?(f) }, "no Ruby frame without the GVL: #{r[:frames]}"
      refute_empty r[:frames], "native frames are there"
    end
    assert_operator res[:stats][:skipped], :>=, 16, "the hook said no on threads without the GVL"
  end

  def test_start_and_stop_at_run_time
    res, = profile_run(<<~'RUBY')
      KEEP = []
      def site(size) = 4.times { KEEP << MALLOC_GVL.call(size) }
      off = Trimalloc::Profile.interval
      site(3 << 20)                                  # before start: not seen
      Trimalloc::Profile.start(interval: 64 * 1024)
      on = Trimalloc::Profile.interval
      site(5 << 20)                                  # while on
      gone = MALLOC_GVL.call(6 << 20)                # sampled, then freed
      FREE.call(gone)
      Trimalloc::Profile.stop
      stopped = Trimalloc::Profile.interval
      site(7 << 20)                                  # while off again: not seen
      mid = Trimalloc::Profile.top(0)
      Trimalloc::Profile.start
      again = Trimalloc::Profile.interval
      site(9 << 20)
      report(off: off, on: on, stopped: stopped, again: again, mid: mid, rows: Trimalloc::Profile.top(0))
    RUBY
    assert_equal 0, res[:off], "sampling is off unless TRIMALLOC_PROF=1"
    assert_equal 64 * KiB, res[:on]
    assert_equal 0, res[:stopped]
    assert_equal 64 * KiB, res[:again], "start without an interval keeps the last one"
    [[3, 0], [5, 4], [6, 0], [7, 0], [9, 4]].each do |mib, n|
      assert_equal n, rows_of(res[:rows], mib << 20).sum { |r| r[:inuse_objects] }, "#{mib} MiB blocks"
    end
    assert_equal 4, rows_of(res[:mid], 5 << 20).sum { |r| r[:inuse_objects] }, "stop keeps the live samples"
    assert_empty rows_of(res[:mid], 6 << 20), "a sampled block's free removes it"
  end

  def test_peak_profile_and_dump_paths
    res, _script, dir = profile_run(<<~'RUBY')
      KEEP = []
      def peak_site = 16.times.map { MALLOC_GVL.call(3 << 20) }
      def later_site = 2.times { KEEP << MALLOC_GVL.call(5 << 20) }
      Trimalloc::Profile.start(interval: 64 * 1024)
      Trimalloc::Profile.reset_peak
      peak_site.each { |p| FREE.call(p) }
      later_site
      live = Trimalloc::Profile.top(0)
      peak = Trimalloc::Profile.top(0, kind: :peak)
      paths = [Trimalloc::Profile.dump, Trimalloc::Profile.dump(kind: :peak),
               Trimalloc::Profile.dump(File.join(File.dirname(__FILE__), "mine.pb.gz"))]
      report(live: live, peak: peak, paths: paths, pid: Process.pid)
    RUBY
    assert_empty rows_of(res[:live], 3 << 20), "freed: not live"
    assert_equal 2, rows_of(res[:live], 5 << 20).sum { |r| r[:inuse_objects] }
    at_peak = rows_of(res[:peak], 3 << 20)
    assert_operator at_peak.sum { |r| r[:inuse_objects] }, :>=, 14, "the peak holds (nearly) all 16: #{at_peak}"
    at_peak.each { |r| assert frame_at(r[:frames], "Object#peak_site"), r[:frames].inspect }
    live_path, peak_path, mine = res[:paths]
    assert_match(%r{\A#{Regexp.escape(dir)}/prof\.#{res[:pid]}\.\d+\.dump\.pb\.gz\z}, live_path)
    assert_match(%r{\A#{Regexp.escape(dir)}/prof\.#{res[:pid]}\.\d+\.peak\.pb\.gz\z}, peak_path)
    assert_equal File.join(dir, "mine.pb.gz"), mine
    [live_path, peak_path, mine].each do |p|
      assert File.file?(p), p
      assert_equal "\x1f\x8b".b, File.binread(p, 2), "#{p} is gzipped"
    end
    assert_equal 3, Dir.glob(File.join(dir, "*.pb.gz")).size, "top's own dumps were removed"
  end

  # Every allocation sampled, on four threads, while the main thread
  # compacts the heap: no crash, no deadlock (the timeout), and the frames,
  # named only at the end (after the compactions), are still the right
  # methods (the keys are pinned).
  def test_interval_one_with_threads_and_compaction
    res, script, = profile_run(<<~'RUBY', timeout: 300)
      Trimalloc::Profile.send(:__test_defer_naming, true)
      KEEP = []
      LOCK = Mutex.new
      def churn(t)
        400.times do |i|
          a = Array.new(40) { |j| "s#{t}-#{i}-#{j}" * 8 }
          h = { i => a, "k#{i}" => a.map(&:upcase) }
          JSON.generate(h)
          LOCK.synchronize { KEEP << a.join } if (i % 50).zero?
        end
      end
      def compact_site = 32.times.map { "c" * 300_000 }
      Trimalloc::Profile.start(interval: 1)
      held = compact_site
      threads = 4.times.map { |t| Thread.new { churn(t) } }
      compactions = 0
      while threads.any?(&:alive?)
        GC.compact
        compactions += 1
      end
      threads.each(&:join)
      GC.verify_compaction_references(double_heap: false, toward: :empty)
      rows = Trimalloc::Profile.top(0)
      report(rows: rows.first(200), compactions: compactions, held: held.size, stats: Trimalloc::Profile.frame_stats)
    RUBY
    warn "interval 1: #{res[:compactions]} compactions, #{res[:stats]}" if ENV["TRIMALLOC_TEST_VERBOSE"]
    assert_operator res[:compactions], :>=, 1
    assert_operator res[:stats][:samples], :>=, 4 * 400 * 40, "interval 1: every allocation of the threads sampled"
    churn = res[:rows].select { |r| frame_at(r[:frames], "Object#churn") }
    refute_empty churn, "the threads' samples name churn"
    churn.each do |r|
      i = frame_at(r[:frames], "Object#churn")
      assert_match(/\(#{Regexp.escape(script)}:\d+\)\z/, r[:frames][i])
    end
    # the strings' buffers (String#* under compact_site, 300 kB each; the
    # array that holds them and the enumerator's garbage are other rows of
    # compact_site, and so is, in some runs, a heap page's 352-byte header that
    # Ruby mallocs when String#* needs a new object slot: whether it does
    # depends on how many objects were live before, e.g. the gem's own)
    held = res[:rows].select do |r|
      frame_at(r[:frames], "Object#compact_site") && frame_at(r[:frames], "String#*") &&
        r[:inuse_space] >= r[:inuse_objects] * 300_000
    end
    assert_equal 32, held.sum { |r| r[:inuse_objects] }, "32 strings of 300 kB: #{held}"
    assert_equal 0, res[:stats][:dropped]
  end

  # Every allocation sampled while the process forks (each child reads its
  # own profile, with Ruby frames) and takes signals whose handlers
  # allocate: no deadlock (the timeout), every child done.
  def test_interval_one_with_fork_and_signals
    res, = profile_run(<<~'RUBY', timeout: 300)
      Trimalloc::Profile.start(interval: 1)
      hits = 0
      Signal.trap("USR1") { hits += 1; $sig_kept = "t" * 1000 }
      killer = Thread.new { 300.times { Process.kill("USR1", Process.pid); sleep 0.001 } }
      def child_site = Array.new(2000) { |i| "f#{i}" * 10 }
      statuses = Array.new(5) do
        pid = fork do
          kept = child_site
          rows = Trimalloc::Profile.top(0)
          exit!(rows.any? { |r| r[:frames].any? { |f| f.start_with?("Object#child_site") } } && kept.size == 2000 ? 0 : 3)
        end
        Array.new(500) { |i| "p#{i}" * 10 }
        Process.wait2(pid)[1].exitstatus
      end
      killer.join
      report(statuses: statuses, hits: hits, rows: Trimalloc::Profile.top(5).size)
    RUBY
    assert_equal [0] * 5, res[:statuses], "each child read its own profile with Ruby frames"
    assert_operator res[:hits], :>, 0
    assert_operator res[:rows], :>, 0
  end

  # A full frame table: the frames it cannot pin are left out (counted),
  # never handed to the core unpinned; the sample keeps its native frames.
  def test_full_frame_table_drops_frames_and_counts_them
    res, = profile_run(<<~'RUBY')
      KEEP = []
      def never_seen_site = 4.times { KEEP << MALLOC_GVL.call(3 << 20) }
      Trimalloc::Profile.start(interval: 64 * 1024)
      Trimalloc::Profile.send(:__test_table_full, true)
      never_seen_site
      Trimalloc::Profile.send(:__test_table_full, false)
      report(rows: Trimalloc::Profile.top(0), stats: Trimalloc::Profile.frame_stats)
    RUBY
    rows = rows_of(res[:rows], 3 << 20)
    assert_equal 4, rows.sum { |r| r[:inuse_objects] }
    rows.each do |r|
      refute frame_at(r[:frames], "Object#never_seen_site"), r[:frames].inspect
      refute_empty r[:frames]
    end
    assert_operator res[:stats][:dropped], :>=, 4
  end

  def test_bad_arguments_raise_naming_the_value
    pr = Trimalloc::Profile
    e = assert_raises(ArgumentError) { pr.start(interval: 0) }
    assert_includes e.message, "(given 0)"
    e = assert_raises(ArgumentError) { pr.start(interval: (1 << 30) + 1) }
    assert_includes e.message, "1073741825"
    e = assert_raises(TypeError) { pr.start(interval: "1k") }
    assert_includes e.message, '"1k"'
    e = assert_raises(ArgumentError) { pr.dump(kind: :heap) }
    assert_includes e.message, ":heap"
    e = assert_raises(ArgumentError) { pr.top(5, by: :bytes) }
    assert_includes e.message, ":bytes"
    e = assert_raises(ArgumentError) { pr.top(-1) }
    assert_includes e.message, "-1"
    e = assert_raises(TypeError) { pr.top("3") }
    assert_includes e.message, '"3"'
    e = assert_raises(TypeError) { pr.tag = 42 }
    assert_includes e.message, "42"
    assert_raises(ArgumentError) { pr.tag = "a\0b" }
  end

  # On glibc (this test process), the profiler says it needs trimalloc and
  # how to run under it; stop, reset_peak, tags and interval still answer
  # (nothing samples), as in the Python package.
  def test_not_active_raises_trimalloc_error_saying_how_to_run
    skip "this process runs on trimalloc" if Trimalloc.active?
    %i[start dump top].each do |m|
      e = assert_raises(Trimalloc::Error, m.to_s) { Trimalloc::Profile.public_send(m) }
      assert_match(/not the process's allocator.*trimalloc run/, e.message)
    end
    assert_nil Trimalloc::Profile.stop
    Trimalloc::Profile.reset_peak
    assert_equal 0, Trimalloc::Profile.interval
    Trimalloc::Profile.with_tag("x") { assert_equal "x", Trimalloc::Profile.tag }
    assert_nil Trimalloc::Profile.tag
  end

  def test_dump_errors_name_the_path
    res, = profile_run(<<~'RUBY')
      Trimalloc::Profile.start
      begin
        Trimalloc::Profile.dump("/nonexistent-dir/x.pb.gz")
      rescue SystemCallError => e
        report(class: e.class.name, message: e.message)
      end
    RUBY
    assert_equal "Errno::ENOENT", res[:class]
    assert_includes res[:message], "/nonexistent-dir/x.pb.gz"
  end

  def test_with_tag_labels_samples_and_restores_the_tag
    res, = profile_run(<<~'RUBY')
      KEEP = []
      Trimalloc::Profile.start(interval: 64 * 1024)
      Trimalloc::Profile.tag = "outer"
      Trimalloc::Profile.with_tag("ImportJob") do
        4.times { KEEP << MALLOC_GVL.call(3 << 20) }
        raise "job failed"
      rescue RuntimeError
        nil
      end
      after = Trimalloc::Profile.tag
      4.times { KEEP << MALLOC_GVL.call(5 << 20) }
      Trimalloc::Profile.tag = nil
      4.times { KEEP << MALLOC_GVL.call(7 << 20) }
      report(after: after, rows: Trimalloc::Profile.top(0))
    RUBY
    assert_equal "outer", res[:after]
    { 3 => "ImportJob", 5 => "outer", 7 => nil }.each do |mib, tag|
      rows = rows_of(res[:rows], mib << 20)
      assert_equal 4, rows.sum { |r| r[:inuse_objects] }, "#{mib} MiB"
      rows.each { |r| tag ? assert_equal(tag, r[:tag], "#{mib} MiB blocks' tag") : assert_nil(r[:tag]) }
    end
  end

  # The Rack middleware tags a request's samples with its path (no query
  # string) until the body is closed, and puts the thread's tag back after.
  def test_rack_middleware_tags_samples_with_the_request_path
    res, = profile_run(<<~'RUBY')
      require "rack"
      require "rack/mock"
      require "trimalloc/rack"
      KEEP = []
      app = Trimalloc::Rack.new(lambda do |env|
        4.times { KEEP << MALLOC_GVL.call(3 << 20) }
        [200, {}, [Trimalloc::Profile.tag.to_s]]
      end, every: 1000, min_free: nil)
      Trimalloc::Profile.start(interval: 64 * 1024)
      body = Rack::MockRequest.new(app).get("/orders/42?page=2").body
      after = Trimalloc::Profile.tag
      4.times { KEEP << MALLOC_GVL.call(5 << 20) }
      report(body: body, after: after, rows: Trimalloc::Profile.top(0))
    RUBY
    assert_equal "/orders/42", res[:body], "the tag while the app runs"
    assert_nil res[:after]
    tagged = rows_of(res[:rows], 3 << 20)
    assert_equal 4, tagged.sum { |r| r[:inuse_objects] }
    tagged.each { |r| assert_equal "/orders/42", r[:tag] }
    rows_of(res[:rows], 5 << 20).each { |r| assert_nil r[:tag] }
  end

  # The launcher: `trimalloc run --profile DIR -- ruby ...` samples from the
  # start, and with TRIMALLOC_PROF_AT_EXIT=1 leaves a profile in DIR, named
  # after the command, whose frames name the script's methods although the
  # script never requires trimalloc (RUBYOPT loads the extension).
  def test_run_profile_leaves_files_at_exit
    dir = Dir.mktmpdir("trimalloc-run-profile")
    @dirs << dir
    out_dir = File.join(dir, "profiles", "nested")
    script = File.join(dir, "app.rb")
    File.write(script, <<~'RUBY')
      KEEP = []
      def exit_site = 8.times { KEEP << "e" * 2_000_000 }
      exit_site
    RUBY
    env = child_env(env: { "TRIMALLOC_PROF_AT_EXIT" => "1" })
    _out, err, st = Open3.capture3(env, RUBY, EXE, "run", "--profile", out_dir, "--", RUBY, script)
    assert st.success?, err
    files = Dir.glob(File.join(out_dir, "*.pb.gz"))
    assert_equal 1, files.size, "one profile at exit: #{files}"
    assert_match(/\A#{Regexp.escape(File.basename(RUBY))}\.\d+\.\d+\.\w+\.pb\.gz\z/, File.basename(files[0]))
    rows = Trimalloc.const_get(:Native).prof_top(files[0], "inuse_space", 0)
    site = rows.select { |r| r[:frames].any? { |f| f.start_with?("Object#exit_site (#{script}:2)") } }
    assert_equal 8, site.sum { |r| r[:inuse_objects] }, rows.first(3).inspect

    # a Ruby other than the one the extension was built for does not load it
    probe = "print defined?(Trimalloc::Profile).inspect"
    hook = "-r#{File.join(LIB_DIR, 'trimalloc', 'profile_hook.rb')}"
    out, err, st = Open3.capture3(env.merge("RUBYOPT" => hook, "RUBYLIB" => nil, "TRIMALLOC_PROFILE_RUBY" => "other 0.0"),
                                  RUBY, "-e", probe)
    assert st.success?, err
    assert_equal "nil", out, "another Ruby does not load the extension"
    out, = Open3.capture3(env.merge("RUBYLIB" => nil), RUBY, "-I#{LIB_DIR}", EXE, "run", "--profile",
                          File.join(dir, "other"), "--", RUBY, "-e", probe)
    assert_equal '"constant"', out, "the gem's Ruby loads it"
  end
end
