# frozen_string_literal: true

require_relative "ext-ruby/lib/trimalloc/version"

Gem::Specification.new do |s|
  s.name = "trimalloc"
  s.version = Trimalloc::VERSION
  s.summary = "A memory allocator for Ruby that gives memory back to the OS"
  s.description = <<~TEXT
    trimalloc replaces malloc process-wide (LD_PRELOAD, through the `trimalloc run`
    launcher or `require "trimalloc/preload"`), returns freed memory to the kernel after
    Ruby's GC and after jobs and requests (Sidekiq, Puma, Rack), and reports where memory
    goes. Without the preload it drives glibc (malloc_trim, mallinfo2). Linux only.
  TEXT
  s.authors = ["trimalloc authors"]
  s.license = "MIT"
  s.required_ruby_version = ">= 2.7"

  s.files = Dir.chdir(__dir__) do
    Dir["core/*.{c,h}", "core/Makefile", "core/prim/*", "core/bind/*",
        "ext-ruby/ext/trimalloc/*.{c,h,rb}", "ext-ruby/lib/**/*.rb", "ext-ruby/exe/*",
        "README.md", "LICENSE*"].select { |f| File.file?(f) }.sort
  end
  s.require_paths = ["ext-ruby/lib"]
  s.bindir = "ext-ruby/exe"
  s.executables = ["trimalloc"]
  s.extensions = ["ext-ruby/ext/trimalloc/extconf.rb"]
end
