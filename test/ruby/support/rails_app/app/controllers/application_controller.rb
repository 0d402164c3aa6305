# frozen_string_literal: true

class ApplicationController < ActionController::Base
  protect_from_forgery with: :null_session
  # Which worker answered (the test checks that each one took a burst).
  after_action { response.headers["X-Worker-Pid"] = Process.pid.to_s }
end
