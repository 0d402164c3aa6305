# frozen_string_literal: true

# First line of a program: `require "trimalloc/preload"`. Unless trimalloc is
# already the process allocator, re-executes the same command line (same pid)
# with the library in LD_PRELOAD, exactly once (a guard in the environment).
# If that cannot be done, warns once and carries on with glibc.
require "trimalloc"

Trimalloc.preload!
