# frozen_string_literal: true

# The JSON API: 100 items from an offset.
class ApiController < ApplicationController
  def items
    offset = params.fetch(:offset, 0).to_i
    items = Item.order(:id).offset(offset).limit(100)
    render json: { offset: offset, items: items.map { |i| i.as_json.merge(price: i.price) } }
  end
end
