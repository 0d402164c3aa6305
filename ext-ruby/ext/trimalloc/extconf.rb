# Builds trimalloc/trimalloc_ext (this directory's C files + core/bind/bind_*.c)
# and the bundled preload library libtrimalloc.so, by running the core's own
# Makefile (the one place that knows its flags). `make install` puts both next
# to each other, in the gem's lib/trimalloc/, where Trimalloc.library_path
# looks.
require "etc"
require "mkmf"

core_dir = File.expand_path("../../../core", __dir__)
bind_dir = File.join(core_dir, "bind")
abort "trimalloc: core sources not found in #{core_dir}" unless File.file?(File.join(bind_dir, "binding.h"))

have_library("dl", "dlsym")
# Ruby 3.3 deprecates rb_postponed_job_register_one for these two.
have_func("rb_postponed_job_preregister", "ruby/debug.h")
have_func("rb_postponed_job_trigger", "ruby/debug.h")
$INCFLAGS << " -I#{bind_dir} -I#{core_dir}"
$CFLAGS << " -std=gnu11 -fvisibility=hidden -Wall -Wextra -Wno-unused-parameter"
$VPATH << bind_dir
# The shared glue is core/bind/bind_*.c (distinct names: no clash with the
# files of this directory in the VPATH build), less bind_pymalloc.c: pymalloc's
# pool walker is CPython's alone, and nothing here calls it.
$srcs = Dir.glob(File.join($srcdir || __dir__, "*.c")).map { |f| File.basename(f) }.sort +
        (Dir.glob(File.join(bind_dir, "bind_*.c")).map { |f| File.basename(f) } - ["bind_pymalloc.c"]).sort

create_makefile("trimalloc/trimalloc_ext")

core_build = File.join(Dir.pwd, "core-build")
headers = [File.join(core_dir, "trimalloc.h"), File.join(core_dir, "gzip.h"), *Dir.glob(File.join(bind_dir, "*.h")).sort,
           *Dir.glob(File.join($srcdir || __dir__, "*.h")).sort]
File.open("Makefile", "a") do |mk|
  mk.puts <<~MAKE

    # --- the bundled preload library, built by the core's Makefile ---------
    TRIMALLOC_CORE = #{core_dir}
    TRIMALLOC_CORE_BUILD = #{core_build}

    all: libtrimalloc.so

    # The core's make decides what is out of date. MAKEFLAGS is cleared so
    # variables given to this make (target_prefix, sitearchdir, ...) do not
    # leak into the core's build; WERROR= keeps a newer compiler's new warnings
    # from failing `gem install`. Its files compile on every CPU (-j): RubyGems
    # runs this make without -j.
    libtrimalloc.so: trimalloc-core-force
    \tMAKEFLAGS= $(MAKE) -j#{Etc.nprocessors} -C "$(TRIMALLOC_CORE)" BUILD="$(TRIMALLOC_CORE_BUILD)" WERROR=
    \t$(Q) cmp -s "$(TRIMALLOC_CORE_BUILD)/libtrimalloc.so" $@ || cp "$(TRIMALLOC_CORE_BUILD)/libtrimalloc.so" $@

    # Every object is rebuilt when a header it reads changes (the core's
    # stats field list in trimalloc.h above all): mkmf knows only Ruby's.
    $(OBJS): #{headers.join(" ")}

    .PHONY: trimalloc-core-force
    trimalloc-core-force:

    install-so: $(RUBYARCHDIR)/libtrimalloc.so
    $(RUBYARCHDIR)/libtrimalloc.so: libtrimalloc.so
    \t$(Q) $(MAKEDIRS) $(@D)
    \t$(INSTALL_PROG) libtrimalloc.so $(@D)

    clean: clean-trimalloc-core
    clean-trimalloc-core:
    \t-$(Q)$(RM) libtrimalloc.so
    \t-$(Q)$(RM_RF) "$(TRIMALLOC_CORE_BUILD)"
  MAKE
end
