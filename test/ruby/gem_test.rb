# frozen_string_literal: true

require_relative "test_helper"

# Packaging: gem build, then gem install --local into a fresh GEM_HOME builds
# the extension and the bundled libtrimalloc.so from the shipped core/.
class GemTest < Minitest::Test
  include TrimallocTest

  def sh(env, *cmd, **opts)
    out, err, st = Open3.capture3(env, *cmd, **opts)
    assert st.success?, "#{cmd.join(' ')} failed:\n#{out}\n#{err}"
    out
  end

  def test_gem_builds_and_installs_offline
    Dir.mktmpdir("trimalloc-gem") do |dir|
      gem = File.join(dir, "trimalloc.gem")
      home = File.join(dir, "home")
      # No network: --local, and any proxy points at a closed port.
      env = CLEAN_ENV.merge("RUBYLIB" => nil, "GEM_HOME" => home, "GEM_PATH" => home,
                            "http_proxy" => "http://127.0.0.1:9", "https_proxy" => "http://127.0.0.1:9")
      sh(env, "gem", "build", "trimalloc.gemspec", "--output", gem, chdir: ROOT)
      files = sh(env, "gem", "spec", gem, "files")
      %w[core/Makefile core/trimalloc.h core/bind/bind_policy.c core/prim/linux.c
         ext-ruby/ext/trimalloc/extconf.rb ext-ruby/exe/trimalloc].each { |f| assert_includes files, "- #{f}\n" }
      sh(env, "gem", "install", "--local", "--install-dir", home, "--no-document", gem)

      bin = File.join(home, "bin", "trimalloc")
      lib = sh(env, bin, "path").chomp
      assert lib.start_with?(home), "the gem's own copy: #{lib}"
      needed = sh(env, "readelf", "-d", lib).scan(/\(NEEDED\)\s+Shared library: \[(.+?)\]/).flatten
      refute_empty needed
      assert_empty needed.grep(/ruby/), "libtrimalloc.so must not link libruby: #{needed}"

      out = sh(env, bin, "run", "--", RUBY, "-e", 'require "trimalloc"; p Trimalloc.backend', chdir: dir)
      assert_equal ":trimalloc\n", out
      _, _, st = Open3.capture3(env, bin, "run", "--", RUBY, "-e", "exit 3", chdir: dir)
      assert_equal 3, st.exitstatus
    end
  end
end
