-- ISPs read their own invoices, and nothing else (issue 5).
--
-- SQL: each ISP gets a login role (`ledger isp-access`), member of ledger_isp. Its login reads
-- the views isp_periods, isp_invoices and isp_invoice_lines and has no privilege on any table.
-- The views belong to ledger_isp_views, which may select the base tables but is bound by
-- row-level security: a row is visible when its isp_id is the one isp_logins gives the session's
-- login.
--
-- HTTP: per-ISP API keys, stored as SHA-256 hashes only.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger_isp') THEN
        CREATE ROLE ledger_isp NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ledger_isp_views') THEN
        CREATE ROLE ledger_isp_views NOLOGIN NOBYPASSRLS;
    END IF;
END $$;

CREATE TABLE isp_logins (
    role_name  text  PRIMARY KEY,
    isp_id     text  NOT NULL
);

CREATE TABLE isp_api_keys (
    key_sha256  text        PRIMARY KEY CHECK (key_sha256 ~ '^[0-9a-f]{64}$'),
    isp_id      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- session_user: the login the ISP connected with (current_user inside a SECURITY DEFINER
-- function is its owner). The function reads isp_logins with its owner's rights, so that the
-- logins need no privilege on it.
CREATE FUNCTION isp_of_current_login() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT isp_id FROM isp_logins WHERE role_name = session_user
$$;
REVOKE EXECUTE ON FUNCTION isp_of_current_login() FROM PUBLIC;

ALTER TABLE billing_periods ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE invoice_lines ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_isp ON billing_periods FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());
CREATE POLICY own_isp ON invoices FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());
CREATE POLICY own_isp ON invoice_lines FOR SELECT TO ledger_isp_views
    USING (isp_id = isp_of_current_login());

-- Only sealed periods are shown: a closing period's invoices do not exist yet.
CREATE VIEW isp_periods AS
    SELECT isp_id, period, closed_at, invoices, net_cents, vat_cents, gross_cents,
           commission_cents, owed_to_platform_cents, seal
    FROM billing_periods WHERE state = 'closed';
CREATE VIEW isp_invoices AS
    SELECT invoice_id, isp_id, period, account_id, account_kind, company_name, lines, net_cents,
           vat_cents, gross_cents, gross_cents_by_user, seal
    FROM invoices;
CREATE VIEW isp_invoice_lines AS
    SELECT invoice_id, line_no, isp_id, kind, purchase_id, refund_id, user_id, publisher_id,
           description, occurred_at, vat_rate_bp, net_cents, vat_cents, gross_cents,
           late_for_period
    FROM invoice_lines;

DO $$
DECLARE
    here text := current_schema();
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO ledger_isp, ledger_isp_views', here);
    EXECUTE format('GRANT SELECT ON %I.billing_periods, %I.invoices, %I.invoice_lines'
                   ' TO ledger_isp_views', here, here, here);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %I.isp_of_current_login()'
                   ' TO ledger_isp_views, ledger_isp', here);
    EXECUTE format('ALTER VIEW %I.isp_periods OWNER TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_invoices OWNER TO ledger_isp_views', here);
    EXECUTE format('ALTER VIEW %I.isp_invoice_lines OWNER TO ledger_isp_views', here);
    EXECUTE format('GRANT SELECT ON %I.isp_periods, %I.isp_invoices, %I.isp_invoice_lines'
                   ' TO ledger_isp', here, here, here);
END $$;
