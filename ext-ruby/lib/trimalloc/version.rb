# frozen_string_literal: true

module Trimalloc
  # Kept equal to TRIMALLOC_VERSION in core/trimalloc.h (a test checks it).
  VERSION = "0.1.0"
end
