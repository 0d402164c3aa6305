# frozen_string_literal: true

# What the test reads from the worker that answers: which allocator it runs
# on, its hooks' counters, its RSS. `hold=S` answers after S seconds (at most
# 5): 10 held probes fill both workers' 5 threads, so both answer. `gc=1`
# runs GC.start first (a long request's buffers are old objects by its end:
# only a major GC frees them).
class ProbeController < ApplicationController
  def show
    sleep params[:hold].to_f.clamp(0, 5) if params[:hold]
    GC.start if params[:gc]
    status = File.read("/proc/self/status")
    render json: {
      pid: Process.pid, ppid: Process.ppid, backend: Trimalloc.backend,
      gc_hook: Trimalloc::GC.enabled?, gc: Trimalloc::GC.stats,
      plugin: defined?(Trimalloc::Puma) ? Trimalloc::Puma.stats : nil,
      watch: defined?(Trimalloc::Puma) && Trimalloc::Puma.respond_to?(:watch_stats) ? Trimalloc::Puma.watch_stats : nil,
      trims: Trimalloc.stats[:trims], dirty: Trimalloc.stats[:dirty], arenas: Trimalloc.stats[:arenas],
      major_gcs: GC.stat(:major_gc_count), minor_gcs: GC.stat(:minor_gc_count),
      heap_pages: GC.stat(:heap_allocated_pages), malloc_bytes: GC.stat(:malloc_increase_bytes),
      rss: status[/^VmRSS:\s+(\d+)/, 1].to_i * 1024, hwm: status[/^VmHWM:\s+(\d+)/, 1].to_i * 1024
    }
  end
end
