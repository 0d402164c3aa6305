# frozen_string_literal: true

require "csv"

# The CSV export: every item, `rounds` times over, read in batches of 1000
# as Rails advises for exports: records (find_each), or with `pluck=1` only
# the columns (fewer Ruby objects: the burst is the strings). All garbage
# once the response is sent.
class ExportsController < ApplicationController
  COLUMNS = %i[id sku name price_cents stock description].freeze

  def show
    rounds = params.fetch(:rounds, 4).to_i.clamp(1, 50)
    csv = CSV.generate do |out|
      out << COLUMNS
      rounds.times { params[:pluck] ? plucked(out) : records(out) }
    end
    send_data csv, type: "text/csv", filename: "items.csv"
  end

  private

  def records(out)
    Item.find_each(batch_size: 1000) do |i|
      out << [i.id, i.sku, i.name, format("%.2f", i.price), i.stock, i.description]
    end
  end

  def plucked(out)
    Item.in_batches(of: 1000) { |batch| batch.pluck(*COLUMNS).each { |row| out << row } }
  end
end
