# frozen_string_literal: true

# Trim after the GC's major collections. With preload_app! the master runs
# this once and every worker it forks keeps the hook.
Trimalloc::GC.enable
