# frozen_string_literal: true

# The shop's table, created and filled on first boot (the master's, with
# preload_app!): ITEMS rows with a description long enough to live in malloc'd
# memory, not inside Ruby's object slots.
Rails.application.config.after_initialize do
  conn = ActiveRecord::Base.connection
  unless conn.table_exists?(:items)
    conn.create_table(:items) do |t|
      t.string :name, null: false
      t.string :sku, null: false
      t.text :description
      t.integer :price_cents, null: false
      t.integer :stock, null: false
      t.timestamps
    end
    now = Time.now
    rows = Array.new(Integer(ENV.fetch("APP_ITEMS", "3000"))) do |i|
      { name: "Item #{i}", sku: format("SKU-%06d", i), price_cents: 100 + (i * 37 % 10_000),
        stock: i % 97, description: "A fine item number #{i}. " * 8, created_at: now, updated_at: now }
    end
    rows.each_slice(500) { |s| Item.insert_all(s) }
  end
  ActiveRecord::Base.connection_handler.clear_all_connections!
end
