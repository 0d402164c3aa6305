# frozen_string_literal: true

require "fileutils"
require "json"
require "net/http"
require "open3"
require "rbconfig"
require "rubygems/installer"

# The Rails app of rails_test.rb and bench/rails_puma.rb (support/rails_app),
# set up as a user's would be: a copy in `dir`, its Gemfile resolved offline
# against the installed gems (`bundle install --local`), and a bin directory
# holding `puma` as RubyGems writes it for `gem install puma` (a #! line
# naming this ruby, then `load Gem.activate_bin_path("puma", "puma", ...)`,
# as on rbenv or the Docker ruby images), so that `bundle exec puma` loads
# Puma into its own process, as it does there. Debian's /usr/bin/puma starts
# with `#!/usr/bin/ruby`, which Bundler runs in a new process instead.
module RailsSetup
  APP = File.expand_path("rails_app", __dir__)
  ROOT = File.expand_path("../../..", __dir__)

  module_function

  # Copies the app into dir/app; returns the environment that runs it:
  # PATH with dir/bin first, BUNDLE_GEMFILE, the Gemfile's trimalloc taken
  # from this checkout (TRIMALLOC_GEMFILE_PATH; its lib holds the compiled
  # extension and library, `rake compile`).
  def prepare(dir, env)
    app = File.join(dir, "app")
    FileUtils.cp_r(APP, app)
    bin = File.join(dir, "bin")
    FileUtils.mkdir_p(bin)
    write_gem_bin(bin, "puma")
    env = env.merge("PATH" => "#{bin}:#{ENV.fetch('PATH')}", "BUNDLE_GEMFILE" => File.join(app, "Gemfile"),
                    "BUNDLE_APP_CONFIG" => File.join(dir, "bundle"), "TRIMALLOC_GEMFILE_PATH" => ROOT,
                    "RAILS_ENV" => "production", "APP_DB" => File.join(dir, "app.sqlite3"))
    out, st = Open3.capture2e(env, "bundle", "install", "--local", "--quiet", chdir: app)
    raise "bundle install --local failed:\n#{out}" unless st.success?

    [app, env]
  end

  # `gem install`'s wrapper for a gem's executable, written by RubyGems.
  def write_gem_bin(bin, name)
    spec = Gem::Specification.find_by_name(name)
    inst = Gem::Installer.for_spec(spec, wrappers: true, env_shebang: false, install_dir: spec.base_dir)
    path = File.join(bin, name)
    File.write(path, inst.app_script_text(name))
    File.chmod(0o755, path)
    path
  end

  # The mix of one request in 50 of `n` (the requests' own numbers): the CSV
  # export (the burst), else an ERB page (a list or an item) or the JSON API.
  def path_for(i)
    case i % 50
    when 0 then "/export.csv?rounds=#{ENV.fetch("APP_EXPORT_ROUNDS", 12)}"
    when 1..24 then i.odd? ? "/items?page=#{i % 60}" : "/items/#{1 + (i * 7919) % 3000}"
    else "/api/items?offset=#{(i * 31) % 2900}"
    end
  end

  # Sends requests first..first+count-1 from `clients` threads, each on its
  # own keep-alive connection; returns the number of non-200 answers.
  def load(port, count, clients: 10, first: 0)
    queue = Queue.new
    (first...first + count).each { |i| queue << i }
    queue.close
    Array.new(clients) do
      Thread.new do
        bad = 0
        Net::HTTP.start("127.0.0.1", port, read_timeout: 120) do |h|
          while (i = queue.pop)
            r = h.get(path_for(i))
            r.body
            bad += 1 unless r.code == "200"
          end
        end
        bad
      end
    end.sum(&:value)
  end
end
