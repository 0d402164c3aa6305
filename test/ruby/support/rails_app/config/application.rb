# frozen_string_literal: true

require_relative "boot"
require "rails"
require "active_record/railtie"
require "action_controller/railtie"
require "action_view/railtie"

Bundler.require(*Rails.groups)

module ShopApp
  class Application < Rails::Application
    config.load_defaults 6.1
    config.eager_load = true
    config.cache_classes = true
    config.consider_all_requests_local = false
    config.secret_key_base = "trimalloc-test-app-not-secret"
    config.logger = Logger.new(nil)
    config.log_level = :warn
    config.active_record.verbose_query_logs = false
    config.public_file_server.enabled = false
  end
end
