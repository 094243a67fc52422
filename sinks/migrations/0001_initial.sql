-- The sink's tables. Every event table is keyed by the event's deterministic
-- event_id, so a replayed event is stored once. Money and counters are numeric.

CREATE TABLE status_changes (
    event_id       text PRIMARY KEY,
    customer_id    text NOT NULL,
    status_system  text NOT NULL,
    previous       text,
    current        text NOT NULL,
    direction      text NOT NULL,
    reason         text NOT NULL,
    effective_from timestamptz NOT NULL,
    valid_until    timestamptz,
    counter        numeric NOT NULL,
    period         text NOT NULL,
    caused_by      text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    operator       text,
    comment        text
);
CREATE INDEX status_changes_customer_idx ON status_changes (customer_id, occurred_at);

CREATE TABLE offer_triggers (
    event_id    text PRIMARY KEY,
    customer_id text NOT NULL,
    offer_id    text NOT NULL,
    action      text NOT NULL,
    points      integer,
    percent     numeric,
    amount      numeric,
    expires_at  timestamptz,
    receipt_id  text,
    caused_by   text NOT NULL,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX offer_triggers_customer_idx ON offer_triggers (customer_id, occurred_at);

CREATE TABLE receipt_messages (
    event_id    text PRIMARY KEY,
    receipt_id  text NOT NULL,
    pos_id      text NOT NULL,
    customer_id text,
    lines       jsonb NOT NULL,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX receipt_messages_customer_idx ON receipt_messages (customer_id) WHERE customer_id IS NOT NULL;
CREATE INDEX receipt_messages_receipt_idx ON receipt_messages (receipt_id);

-- Current state, one row per customer; only a snapshot with a higher version replaces it.
CREATE TABLE customers (
    customer_id  text PRIMARY KEY,
    client_state text NOT NULL,
    statuses     jsonb NOT NULL,
    version      bigint NOT NULL,
    event_id     text NOT NULL UNIQUE,
    updated_at   timestamptz NOT NULL
);

-- customers.statuses, one row per status system, for reporting; rebuilt from the
-- stored snapshot whenever it changes. Only customers who take part in the
-- programme (not deleted or excluded) have rows here.
CREATE TABLE customer_statuses (
    customer_id   text NOT NULL REFERENCES customers (customer_id) ON DELETE CASCADE,
    status_system text NOT NULL,
    status        text NOT NULL,
    valid_until   timestamptz,
    period        text,
    counter       numeric,
    PRIMARY KEY (customer_id, status_system)
);
CREATE INDEX customer_statuses_level_idx ON customer_statuses (status_system, status);
