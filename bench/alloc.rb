# Shared by the Ruby benchmark scripts: which allocator serves malloc in this
# process, its trim call (same lookup order as bench/common.h), RSS and
# minor faults from /proc, and the "BENCH {...}" result line bench/run reads.
require 'fiddle'
require 'json'
require 'etc'

module BenchAlloc
  H = Fiddle::Handle::DEFAULT

  def self.sym(name)
    H[name]
  rescue Fiddle::DLError
    nil
  end

  def self.allocator
    t = sym('trimalloc_malloc')
    return 'trimalloc' if t && sym('malloc') == t
    return 'mimalloc' if sym('mi_malloc')
    return 'jemalloc' if sym('mallctl')
    'glibc'
  end

  # [name, callable] for the loaded allocator's "release free memory now";
  # idle: the trim trimalloc's hooks use (with hysteresis), where there is one.
  def self.trim_function(idle: false)
    if idle && (a = sym('trimalloc_trim_idle'))
      f = Fiddle::Function.new(a, [], Fiddle::TYPE_SIZE_T)
      ['trimalloc_trim_idle()', -> { f.call }]
    elsif (a = sym('trimalloc_trim'))
      f = Fiddle::Function.new(a, [], Fiddle::TYPE_SIZE_T)
      ['trimalloc_trim()', -> { f.call }]
    elsif (a = sym('mi_collect'))
      f = Fiddle::Function.new(a, [Fiddle::TYPE_INT], Fiddle::TYPE_VOID)
      ['mi_collect(true)', -> { f.call(1) }]
    elsif (a = sym('mallctl'))
      f = Fiddle::Function.new(a, [Fiddle::TYPE_VOIDP, Fiddle::TYPE_VOIDP, Fiddle::TYPE_VOIDP,
                                   Fiddle::TYPE_VOIDP, Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
      ['mallctl(arena.4096.purge)', -> { f.call('arena.4096.purge', nil, nil, nil, 0) }]
    elsif (a = sym('malloc_trim'))
      f = Fiddle::Function.new(a, [Fiddle::TYPE_SIZE_T], Fiddle::TYPE_INT)
      ['malloc_trim(0)', -> { f.call(0) }]
    else
      ['none', -> {}]
    end
  end

  PAGE = Etc.sysconf(Etc::SC_PAGESIZE)

  def self.rss
    File.read('/proc/self/statm').split[1].to_i * PAGE
  end

  def self.minflt
    # /proc/self/stat: the command may hold spaces, so split after ')'.
    File.read('/proc/self/stat').split(')', 2)[1].split[7].to_i
  end

  def self.cpu
    Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID)
  end

  def self.report(workload, fields)
    $stdout.puts "BENCH #{JSON.generate({ 'workload' => workload, 'allocator' => allocator }.merge(fields))}"
    $stdout.flush
  end
end
