# Prints the process's resident memory split at exit, anonymous against
# file-backed (the heap profiler's unwinder reads the .eh_frame of every
# library on the stack: clean, shared page-cache pages that count in RSS).
#   ruby -r./bench/status_at_exit.rb bench/ruby_churn.rb --iters 40000
at_exit do
  keep = %w[VmHWM VmRSS RssAnon RssFile]
  line = File.readlines("/proc/self/status").select { |l| keep.include?(l.split(":").first) }
  $stderr.puts "STATUS " + line.map { |l| l.split.first(2).join(" ") }.join(" ")
end
