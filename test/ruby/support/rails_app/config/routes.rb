# frozen_string_literal: true

Rails.application.routes.draw do
  resources :items, only: %i[index show]
  get "api/items", to: "api#items"
  get "export.csv", to: "exports#show"
  get "probe", to: "probe#show"
end
