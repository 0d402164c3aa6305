# frozen_string_literal: true

# Puma plugin: trims when every thread is idle (Puma's out_of_band hook).
#
#   # config/puma.rb
#   plugin :trimalloc
#   # optional: Trimalloc::PUMA_OPTIONS[:min_interval] = 5.0 (seconds)
require "puma/plugin"
require "trimalloc"

module Trimalloc
  PUMA_OPTIONS = { min_interval: 1.0, min_free: 0 } # rubocop:disable Style/MutableConstant
end

Puma::Plugin.create do
  def config(dsl)
    dsl.out_of_band do
      Trimalloc.trim_if_due(**Trimalloc::PUMA_OPTIONS)
    end
  end
end
