# Prints the process's resident memory split at exit, anonymous against
# file-backed (the heap profiler's unwinder reads the .eh_frame of every
# library on the stack: clean, shared page-cache pages that count in RSS).
#   ruby -r./bench/status_at_exit.rb bench/ruby_churn.rb --iters 40000
# With STATUS_PAGES=FILE it also writes which file pages are resident in
# this process at exit ("path perms file-offset", hex, one a line, from
# /proc/self/pagemap's present bit); `python3 bench/status_at_exit.py
# --sections A B ...` sums such files per library and ELF section.
at_exit do
  keep = %w[VmHWM VmRSS RssAnon RssFile]
  line = File.readlines("/proc/self/status").select { |l| keep.include?(l.split(":").first) }
  $stderr.puts "STATUS " + line.map { |l| l.split.first(2).join(" ") }.join(" ")
  if (out = ENV["STATUS_PAGES"])
    maps = File.readlines("/proc/self/maps")
    File.open("/proc/self/pagemap", "rb") do |pm|
      File.open(out, "w") do |f|
        maps.each do |l|
          range, perms, off, _dev, inode, path = l.split(" ", 6)
          next if inode == "0" || path.nil?
          lo, hi = range.split("-").map { |x| x.to_i(16) }
          pm.seek(lo / 4096 * 8)
          pm.read((hi - lo) / 4096 * 8).unpack("Q*").each_with_index do |e, i|
            f.puts "#{path.strip} #{perms} #{(off.to_i(16) + i * 4096).to_s(16)}" if e[63] == 1
          end
        end
      end
    end
  end
end
