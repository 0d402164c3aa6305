# frozen_string_literal: true

module Trimalloc
  # Trimalloc.report: where this process's memory is, at three levels side by
  # side. A Hash (nil where the backend cannot measure a value) whose to_s is
  # a short readable table.
  #
  #   ruby:      what Ruby's heap holds: object bodies (memsize_of_all) and
  #              empty object slots (GC.stat free slots x slot size).
  #   allocator: what malloc holds: allocated (live blocks), resident (pages
  #              kept committed), fragmentation = 1 - allocated / resident
  #              (the share of resident memory holding no live block), free
  #              (free but still held bytes: what a trim could return).
  #   kernel:    the process's RSS.
  class Report < Hash
    def to_s
      r = self[:ruby]
      a = self[:allocator]
      frag = a[:fragmentation] ? format("%.1f%%", a[:fragmentation] * 100) : "n/a"
      <<~TEXT
        trimalloc report (backend: #{self[:backend]})
          ruby heap   objects #{Report.bytes(r[:memsize_of_all])} (ObjectSpace.memsize_of_all), free slots #{Report.bytes(r[:free_slot_bytes])} (#{r[:free_slots]} x #{r[:slot_size]} B)
          allocator   allocated #{Report.bytes(a[:allocated])}, resident #{Report.bytes(a[:resident])}, fragmentation #{frag}, free #{Report.bytes(a[:free])}
          kernel      rss #{Report.bytes(self[:kernel][:rss])}
      TEXT
    end

    def self.bytes(n)
      return "n/a" if n.nil?

      units = %w[B KiB MiB GiB TiB]
      v = n.to_f
      i = 0
      while v >= 1024 && i < units.size - 1
        v /= 1024
        i += 1
      end
      i.zero? ? "#{n} B" : format("%.1f %s", v, units[i])
    end
  end

  class << self
    def report
      require "objspace" # here, not at `require "trimalloc"`: report alone uses it

      gc = ::GC.stat
      consts = ::GC::INTERNAL_CONSTANTS
      slot = consts[:RVALUE_SIZE] || consts[:BASE_SLOT_SIZE]
      st = stats
      Report[
        backend: st[:backend],
        ruby: {
          memsize_of_all: ObjectSpace.memsize_of_all,
          live_slots: gc[:heap_live_slots],
          free_slots: gc[:heap_free_slots],
          slot_size: slot,
          free_slot_bytes: gc[:heap_free_slots] * slot,
          heap_pages: gc[:heap_allocated_pages],
        },
        allocator: {
          allocated: st[:allocated],
          resident: st[:resident],
          fragmentation: st[:fragmentation],
          free: free_bytes,
          mapped: st[:mapped],
        },
        kernel: { rss: rss },
      ]
    end
  end
end
