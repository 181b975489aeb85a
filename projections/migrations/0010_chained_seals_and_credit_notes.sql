-- Issue 15, parts 3 and 4 (docs/design/seals.md): hash-chained period seals, credit notes for
-- refunds of sealed invoices, invoice and credit note numbers per ISP without gaps, and sealed
-- data that the database itself refuses to change, delete or truncate.

-- The chain. chain_no: the period's place in its ISP's chain, the order in which its close was
-- decided in partition 0 (its partition-0 close mark's place among the ISP's; set when that mark
-- is applied). A period is sealed only once the period before it in the chain is, so the chain
-- is a function of the log, whichever writer applies which partition when. prev_seal: the seal
-- the period's seal covers (the previous one in the chain, or 64 zeros for the first); null on a
-- period sealed before this migration, whose seal stays as it was (the unchained formula).
ALTER TABLE billing_periods ADD COLUMN chain_no integer CHECK (chain_no > 0);
ALTER TABLE billing_periods ADD COLUMN prev_seal text;
-- The sealed totals show the credit notes apart from the invoices (net_cents, vat_cents and
-- gross_cents are the invoices'); null on a period sealed before this migration.
ALTER TABLE billing_periods ADD COLUMN credit_notes integer;
ALTER TABLE billing_periods ADD COLUMN credit_notes_net_cents bigint;
ALTER TABLE billing_periods ADD COLUMN credit_notes_vat_cents bigint;
ALTER TABLE billing_periods ADD COLUMN credit_notes_gross_cents bigint;
CREATE UNIQUE INDEX billing_periods_chain ON billing_periods (isp_id, chain_no);

-- The periods here already: in the order their partition-0 close mark was applied (its place in
-- ledger.events, which the writer applies in order), as the writer numbers them from now on.
UPDATE billing_periods p SET chain_no = c.chain_no
FROM (
    SELECT m.isp_id, m.period,
           row_number() OVER (PARTITION BY m.isp_id
                              ORDER BY a.partition NULLS LAST, a."offset" NULLS LAST, m.period)
               AS chain_no
    FROM period_close_marks m LEFT JOIN applied_events a USING (event_id)
    WHERE m.partition = 0
) c
WHERE p.isp_id = c.isp_id AND p.period = c.period;

-- Numbers: one series per ISP for its invoices and credit notes together, from 1, without gaps,
-- assigned in the seal's transaction; null on invoices sealed before this migration.
ALTER TABLE invoices ADD COLUMN number bigint CHECK (number > 0);
CREATE UNIQUE INDEX invoices_number ON invoices (isp_id, number);

CREATE TABLE credit_notes (
    credit_note_id           text     PRIMARY KEY,
    isp_id                   text     NOT NULL,
    period                   text     NOT NULL,
    account_id               text     NOT NULL,
    account_kind             text     NOT NULL,
    number                   bigint   NOT NULL CHECK (number > 0),
    corrects_invoice_id      text     NOT NULL REFERENCES invoices,
    corrects_invoice_number  bigint,
    lines                    integer  NOT NULL,
    net_cents                bigint   NOT NULL,
    vat_cents                bigint   NOT NULL,
    gross_cents              bigint   NOT NULL,
    seal                     text     NOT NULL
);
CREATE INDEX credit_notes_by_period ON credit_notes (isp_id, period);
CREATE UNIQUE INDEX credit_notes_number ON credit_notes (isp_id, number);

CREATE TABLE credit_note_lines (
    credit_note_id    text        NOT NULL REFERENCES credit_notes,
    line_no           integer     NOT NULL CHECK (line_no > 0),
    isp_id            text        NOT NULL,
    event_id          text        NOT NULL,
    refund_id         text        NOT NULL,
    purchase_id       text        NOT NULL,
    user_id           text        NOT NULL,
    publisher_id      text        NOT NULL,
    description       text        NOT NULL,
    occurred_at       timestamptz NOT NULL,
    vat_rate_bp       integer     NOT NULL,
    net_cents         bigint      NOT NULL,
    vat_cents         bigint      NOT NULL,
    gross_cents       bigint      NOT NULL,
    late_for_period   text,
    corrects_line_no  integer     NOT NULL CHECK (corrects_line_no > 0),
    PRIMARY KEY (credit_note_id, line_no)
);

-- Immutability. Credit notes and their lines, as invoices: never updated or deleted.
CREATE TRIGGER credit_notes_sealed BEFORE UPDATE OR DELETE ON credit_notes
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed();
CREATE TRIGGER credit_note_lines_sealed BEFORE UPDATE OR DELETE ON credit_note_lines
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed();

-- A billing period may change while it closes (its marks, its chain_no, then its seal), never
-- once sealed.
CREATE FUNCTION refuse_change_of_sealed_period() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'closed' THEN
        RAISE EXCEPTION 'billing period % % is sealed: it is never updated or deleted',
            OLD.isp_id, OLD.period;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER billing_periods_sealed BEFORE UPDATE OR DELETE ON billing_periods
    FOR EACH ROW EXECUTE FUNCTION refuse_change_of_sealed_period();

-- TRUNCATE skips row triggers: a statement-level trigger refuses it on every table of sealed
-- data. (Dropping the schema, as `ledger replay` does with its scratch schema, is not refused.)
CREATE FUNCTION refuse_truncate_of_sealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% holds sealed rows: it is never truncated', TG_TABLE_NAME;
END $$;
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();
CREATE TRIGGER statements_no_truncate BEFORE TRUNCATE ON statements
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();
CREATE TRIGGER credit_notes_no_truncate BEFORE TRUNCATE ON credit_notes
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();
CREATE TRIGGER credit_note_lines_no_truncate BEFORE TRUNCATE ON credit_note_lines
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();
CREATE TRIGGER billing_periods_no_truncate BEFORE TRUNCATE ON billing_periods
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_truncate_of_sealed();

-- The ISPs' views (migration 0003): new columns last (the views are replaced, so that their
-- owner and grants stay); the credit notes and the statements' seals (which the period's seal
-- covers) under row-level security like the invoices.
CREATE OR REPLACE VIEW isp_periods AS
    SELECT isp_id, period, closed_at, invoices, net_cents, vat_cents, gross_cents,
           commission_cents, owed_to_platform_cents, seal, vat_by_rate, prev_seal, chain_no,
           credit_notes, credit_notes_net_cents, credit_notes_vat_cents, credit_notes_gross_cents
    FROM billing_periods WHERE state = 'closed';
CREATE OR REPLACE VIEW isp_invoices AS
    SELECT invoice_id, isp_id, period, account_id, account_kind, company_name, lines, net_cents,
           vat_cents, gross_cents, gross_cents_by_user, seal, vat_by_rate, number
    FROM invoices;
-- event_id: a line's seal bytes hold it (docs/design/seals.md).
CREATE OR REPLACE VIEW isp_invoice_lines AS
    SELECT invoice_id, line_no, isp_id, kind, purchase_id, refund_id, user_id, publisher_id,
           description, occurred_at, vat_rate_bp, net_cents, vat_cents, gross_cents,
           late_for_period, event_id
    FROM invoice_lines;

ALTER TABLE credit_notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE credit_note_lines ENABLE ROW LEVEL SECURITY;
ALTER TABLE statements ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_isp ON credit_notes FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());
CREATE POLICY own_isp ON credit_note_lines FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());
CREATE POLICY own_isp ON statements FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());

CREATE VIEW isp_credit_notes AS
    SELECT credit_note_id, isp_id, period, account_id, account_kind, number,
           corrects_invoice_id, corrects_invoice_number, lines, net_cents, vat_cents,
           gross_cents, seal
    FROM credit_notes;
CREATE VIEW isp_credit_note_lines AS
    SELECT credit_note_id, line_no, isp_id, event_id, refund_id, purchase_id, user_id,
           publisher_id, description, occurred_at, vat_rate_bp, net_cents, vat_cents,
           gross_cents, late_for_period, corrects_line_no
    FROM credit_note_lines;
CREATE VIEW isp_statement_seals AS
    SELECT statement_id, isp_id, period, publisher_id, seal FROM statements;

DO $$
DECLARE
    here text := current_schema();
BEGIN
    EXECUTE format('GRANT SELECT ON %I.credit_notes, %I.credit_note_lines, %I.statements'
                   ' TO ledger_isp_views', here, here, here);
    EXECUTE format('ALTER VIEW %I.isp_credit_notes OWNER TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_credit_note_lines OWNER TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_statement_seals OWNER TO ledger_isp_views', here);
    EXECUTE format('GRANT SELECT ON %I.isp_credit_notes, %I.isp_credit_note_lines,'
                   ' %I.isp_statement_seals TO ledger_isp', here, here, here);
END $$;
