-- Issue 12: a billing team files VAT by rate. Each invoice and each sealed period keep their
-- totals per VAT rate, written at the seal from the invoice lines (a refund line now states the
-- rate of the purchase it reverses): a JSON array ordered by rate,
-- [{"vat_rate_bp": 2000, "net_cents": ..., "vat_cents": ..., "gross_cents": ...}, ...].
-- Rows sealed before this migration keep null: sealed rows never change (their refund lines
-- state rate 0), and `ledger replay` leaves those periods out of its comparison.
ALTER TABLE invoices ADD COLUMN vat_by_rate jsonb;
ALTER TABLE billing_periods ADD COLUMN vat_by_rate jsonb;

-- The ISPs' views show them too (new columns go last: the views are replaced, not dropped, so
-- that their owner and grants stay).
CREATE OR REPLACE VIEW isp_periods AS
    SELECT isp_id, period, closed_at, invoices, net_cents, vat_cents, gross_cents,
           commission_cents, owed_to_platform_cents, seal, vat_by_rate
    FROM billing_periods WHERE state = 'closed';
CREATE OR REPLACE VIEW isp_invoices AS
    SELECT invoice_id, isp_id, period, account_id, account_kind, company_name, lines, net_cents,
           vat_cents, gross_cents, gross_cents_by_user, seal, vat_by_rate
    FROM invoices;
