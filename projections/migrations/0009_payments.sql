-- Held payments (issue 14, docs/design/checkout.md): one row per payment of an account (a payment
-- id shares the account's namespace of purchase ids), from payment.reserved.v1, and finished by
-- the capture's purchase.authorized.v1 (purchase_id = payment_id), payment.voided.v1 or
-- payment.expired.v1. Not money: invoices, statements and the journal see the capture's purchase
-- only. Every payment fact is also in account_facts, fact by fact, for `ledger reconcile`.
CREATE TABLE payments (
    account_id             text        NOT NULL,
    payment_id             text        NOT NULL,
    isp_id                 text        NOT NULL,
    publisher_id           text        NOT NULL,
    user_id                text        NOT NULL,
    status                 text        NOT NULL
        CHECK (status IN ('reserved', 'captured', 'voided', 'expired')),
    amount_held_cents      bigint      NOT NULL CHECK (amount_held_cents > 0),
    amount_captured_cents  bigint
        CHECK (amount_captured_cents > 0 AND amount_captured_cents <= amount_held_cents),
    reserved_at            timestamptz NOT NULL,  -- the subscriber's confirmation
    hold_expires_at        timestamptz NOT NULL,
    -- When a void or the expiry barrier (its as_of) finished it. Null for a capture: its fact
    -- carries the hold's time (the money belongs to the consent's day and period), not its own.
    finished_at            timestamptz,
    reserved_event_id      text        NOT NULL UNIQUE,
    finished_event_id      text        UNIQUE,
    PRIMARY KEY (account_id, payment_id),
    CHECK ((status = 'reserved') = (finished_event_id IS NULL)),
    CHECK ((status = 'captured') = (amount_captured_cents IS NOT NULL))
);
-- The open holds: few next to the payments, looked up by every batch that has purchases (a
-- capture is a purchase whose id is an open hold's) and by `ledger status`.
CREATE INDEX payments_reserved ON payments (account_id, payment_id) WHERE status = 'reserved';
CREATE INDEX payments_publisher ON payments (publisher_id, payment_id);

-- The open holds, one row each: the cap room they take on their account.
CREATE VIEW holds AS
    SELECT account_id, payment_id, isp_id, publisher_id, user_id,
           amount_held_cents, reserved_at, hold_expires_at
    FROM payments WHERE status = 'reserved';

-- ISPs read their own payments and holds only (migration 0003's rule).
ALTER TABLE payments ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_isp ON payments FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());
CREATE VIEW isp_payments AS
    SELECT account_id, payment_id, isp_id, publisher_id, user_id, status, amount_held_cents,
           amount_captured_cents, reserved_at, hold_expires_at, finished_at
    FROM payments;
CREATE VIEW isp_holds AS
    SELECT account_id, payment_id, isp_id, publisher_id, user_id, amount_held_cents,
           reserved_at, hold_expires_at
    FROM payments WHERE status = 'reserved';

DO $$
DECLARE
    here text := current_schema();
BEGIN
    EXECUTE format('GRANT SELECT ON %I.payments TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_payments OWNER TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_holds OWNER TO ledger_isp_views', here);
    EXECUTE format('GRANT SELECT ON %I.isp_payments, %I.isp_holds TO ledger_isp', here, here);
END $$;
