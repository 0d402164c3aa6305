# frozen_string_literal: true

class Item < ApplicationRecord
  def price
    price_cents / 100.0
  end
end
