-- The excluded customers, which every batch of events is checked against (sinks/postgres.py):
-- a small index, however many customers there are.
CREATE INDEX customers_excluded_idx ON customers (customer_id) WHERE client_state = 'excluded';
