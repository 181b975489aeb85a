-- The projections of ledger.events (DESIGN.md §6, §8). Every row here is a function of the facts,
-- so `ledger replay` rebuilds the same rows into a fresh schema: no column below takes now() or a
-- sequence, except where a comparison leaves it out (projection_offsets.updated_at,
-- applied_events.applied_at).

-- Postings: one row per leg of a money fact's double-entry, in the platform's books (positive is
-- a debit: the party owes it; negative a credit: it is owed to the party). They sum to zero per
-- event_id.
CREATE TABLE journal (
    event_id        text        NOT NULL,
    leg             smallint    NOT NULL CHECK (leg >= 0),
    party           text        NOT NULL CHECK (party IN ('account', 'tax', 'isp', 'publisher', 'platform')),
    party_id        text        NOT NULL,
    amount_cents    bigint      NOT NULL,
    account_id      text        NOT NULL,
    isp_id          text        NOT NULL,
    billing_period  text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    PRIMARY KEY (event_id, leg)
);

-- Every purchase decision: authorized, or rejected with its reason.
CREATE TABLE purchases (
    event_id         text        PRIMARY KEY,
    purchase_id      text        NOT NULL,
    account_id       text        NOT NULL,
    isp_id           text,
    user_id          text        NOT NULL,
    publisher_id     text        NOT NULL,
    category         text,
    decision         text        NOT NULL CHECK (decision IN ('authorized', 'rejected')),
    reason           text,
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    net_cents        bigint,
    vat_cents        bigint,
    vat_rate_bp      integer,
    billing_period   text,
    late_for_period  text,
    occurred_at      timestamptz NOT NULL
);

CREATE TABLE refunds (
    event_id                 text        PRIMARY KEY,
    refund_id                text        NOT NULL,
    purchase_id              text        NOT NULL,
    account_id               text        NOT NULL,
    isp_id                   text,
    publisher_id             text,
    decision                 text        NOT NULL CHECK (decision IN ('refunded', 'rejected')),
    reason                   text,
    amount_cents             bigint      NOT NULL CHECK (amount_cents > 0),
    net_cents                bigint,
    vat_cents                bigint,
    billing_period           text,
    purchase_billing_period  text,
    late_for_period          text,
    occurred_at              timestamptz NOT NULL
);

-- The money facts as the authorizer wrote them, by the period they are billed in: a period is
-- sealed from these with the pure core's billing functions, the same code `ledger reconcile` and
-- the tests use.
CREATE TABLE money_facts (
    event_id        text   PRIMARY KEY,
    isp_id          text   NOT NULL,
    billing_period  text   NOT NULL,
    fact            bytea  NOT NULL
);
CREATE INDEX money_facts_by_period ON money_facts (isp_id, billing_period);

CREATE TABLE accounts (
    account_id    text        PRIMARY KEY,
    isp_id        text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('consumer', 'enterprise')),
    company_name  text,
    blocked       boolean     NOT NULL DEFAULT false,
    block_reason  text,
    opened_at     timestamptz NOT NULL
);

-- Limits, employees, blocks and rejected admin commands: kept whole, as facts.
CREATE TABLE account_facts (
    event_id     text        PRIMARY KEY,
    type         text        NOT NULL,
    account_id   text,
    isp_id       text,
    occurred_at  timestamptz NOT NULL,
    fact         jsonb       NOT NULL
);

-- Balances per party from the postings: debits and credits as positive numbers; balance_cents is
-- debits - credits (what the party owes the platform; negative: what it is owed).
CREATE TABLE balances (
    party          text    NOT NULL,
    party_id       text    NOT NULL,
    purchases      bigint  NOT NULL DEFAULT 0,
    refunds        bigint  NOT NULL DEFAULT 0,
    gross_cents    bigint  NOT NULL DEFAULT 0,
    debits_cents   bigint  NOT NULL DEFAULT 0 CHECK (debits_cents >= 0),
    credits_cents  bigint  NOT NULL DEFAULT 0 CHECK (credits_cents >= 0),
    PRIMARY KEY (party, party_id)
);
CREATE VIEW account_balances AS
    SELECT party_id AS account_id, purchases, refunds, gross_cents, debits_cents, credits_cents,
           debits_cents - credits_cents AS balance_cents
    FROM balances WHERE party = 'account';
CREATE VIEW publisher_balances AS
    SELECT party_id AS publisher_id, purchases, refunds, gross_cents, debits_cents, credits_cents,
           credits_cents - debits_cents AS owed_cents
    FROM balances WHERE party = 'publisher';
CREATE VIEW isp_balances AS
    SELECT party_id AS isp_id, purchases, refunds, gross_cents, debits_cents, credits_cents,
           credits_cents - debits_cents AS commission_cents
    FROM balances WHERE party = 'isp';

-- A period closes partition by partition (PeriodClosed); it is sealed, and its invoices written,
-- when the last partition's mark is applied.
CREATE TABLE billing_periods (
    isp_id                  text        NOT NULL,
    period                  text        NOT NULL CHECK (period ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    state                   text        NOT NULL CHECK (state IN ('closing', 'closed')),
    partitions              integer     NOT NULL CHECK (partitions > 0),
    closed_at               timestamptz,  -- the latest occurred_at of the partitions' close facts
    invoices                integer,
    net_cents               bigint,
    vat_cents               bigint,
    gross_cents             bigint,
    commission_cents        bigint,
    owed_to_platform_cents  bigint,
    seal                    text,
    PRIMARY KEY (isp_id, period)
);

CREATE TABLE period_close_marks (
    isp_id     text     NOT NULL,
    period     text     NOT NULL,
    partition    integer     NOT NULL CHECK (partition >= 0),
    event_id     text        NOT NULL,
    command_id   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (isp_id, period, partition)
);

CREATE TABLE invoices (
    invoice_id           text     PRIMARY KEY,
    isp_id               text     NOT NULL,
    period               text     NOT NULL,
    account_id           text     NOT NULL,
    account_kind         text     NOT NULL,
    company_name         text,
    lines                integer  NOT NULL,
    net_cents            bigint   NOT NULL,
    vat_cents            bigint   NOT NULL,
    gross_cents          bigint   NOT NULL,
    gross_cents_by_user  jsonb    NOT NULL,
    seal                 text     NOT NULL
);
CREATE INDEX invoices_by_period ON invoices (isp_id, period);

CREATE TABLE invoice_lines (
    invoice_id       text        NOT NULL REFERENCES invoices,
    line_no          integer     NOT NULL CHECK (line_no > 0),
    isp_id           text        NOT NULL,
    event_id         text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('purchase', 'refund')),
    purchase_id      text        NOT NULL,
    refund_id        text,
    user_id          text        NOT NULL,
    publisher_id     text        NOT NULL,
    description      text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    vat_rate_bp      integer     NOT NULL,
    net_cents        bigint      NOT NULL,
    vat_cents        bigint      NOT NULL,
    gross_cents      bigint      NOT NULL,
    late_for_period  text,
    PRIMARY KEY (invoice_id, line_no)
);

CREATE TABLE statements (
    statement_id  text     PRIMARY KEY,
    isp_id        text     NOT NULL,
    period        text     NOT NULL,
    publisher_id  text     NOT NULL,
    purchases     integer  NOT NULL,
    refunds       integer  NOT NULL,
    gross_cents   bigint   NOT NULL,
    net_cents     bigint   NOT NULL,
    vat_cents     bigint   NOT NULL,
    owed_cents    bigint   NOT NULL,
    seal          text     NOT NULL
);

-- A sealed invoice, its lines and a statement never change: corrections are late adjustments in
-- a later period. The database refuses an update or a delete outright.
CREATE FUNCTION refuse_change_of_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is sealed: rows are never updated or deleted', TG_TABLE_NAME;
END $$;
CREATE TRIGGER invoices_sealed BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed();
CREATE TRIGGER invoice_lines_sealed BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed();
CREATE TRIGGER statements_sealed BEFORE UPDATE OR DELETE ON statements
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed();
