-- What the sink's batch statements need (sinks/postgres.py).

-- The excluded customers, which every batch of events is checked against: a small index,
-- however many customers there are.
CREATE INDEX customers_excluded_idx ON customers (customer_id) WHERE client_state = 'excluded';

-- customer_statuses rows are written only by the statement that follows their customer's
-- upsert, in the same transaction: the foreign key's check of every row (a fifth of the
-- per-customer cost) guarded nothing. ON DELETE CASCADE went with it; nothing deletes customers.
ALTER TABLE customer_statuses DROP CONSTRAINT customer_statuses_customer_id_fkey;

-- An event's timestamp as the events carry it: ISO-8601 with a UTC offset. One without an
-- offset is refused rather than read in the server's zone; '' is no timestamp. Written in SQL
-- so that the planner inlines it (a PL/pgSQL function cost 8 us a call, the cast alone 1 us);
-- only the refusal is PL/pgSQL, declared STABLE for that.
CREATE FUNCTION loyalty_refuse_instant(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RAISE EXCEPTION 'timestamp without a UTC offset: %', value USING ERRCODE = 'invalid_datetime_format';
END
$$;

CREATE FUNCTION loyalty_instant(value text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN value IS NULL OR value = '' THEN NULL
        WHEN value ~ '^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?([Zz]|[+-]\d\d(:?\d\d(:?\d\d)?)?)$'
            THEN value::timestamptz
        ELSE loyalty_refuse_instant(value)
    END
$$;
