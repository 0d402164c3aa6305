# frozen_string_literal: true

# ERB pages: a page of 50 items, one item.
class ItemsController < ApplicationController
  PER_PAGE = 50

  def index
    @page = params.fetch(:page, 0).to_i
    @items = Item.order(:id).offset(@page * PER_PAGE).limit(PER_PAGE).to_a
  end

  def show
    @item = Item.find(params[:id])
  end
end
