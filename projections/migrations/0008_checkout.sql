-- Checkout with consent (issue 14, docs/design/checkout.md): payments prepared by publishers, the
-- nonces of the ISP assertions already used, the ISPs' signing secrets, and the simulated ISPs'
-- subscriber credentials. None of these is a projection of ledger.events: they are the checkout
-- API's and the identity component's own state, so `ledger replay` leaves them empty.

-- An ISP's HMAC secret, with which its identity component signs assertions. The checkout API must
-- verify signatures, so the secret is kept whole (a hash would not do), like an ISP's SQL
-- password: the table is only readable by the ledger's own role. A rotation keeps the previous
-- secret valid until previous_valid_until (10 minutes).
CREATE TABLE isp_secrets (
    isp_id               text        PRIMARY KEY,
    secret               bytea       NOT NULL CHECK (length(secret) >= 32),
    rotated_at           timestamptz NOT NULL,
    previous_secret      bytea       CHECK (previous_secret IS NULL OR length(previous_secret) >= 32),
    previous_valid_until timestamptz
);

-- A payment prepared by a publisher (POST /v1/payments): no account yet, so no command. Unique on
-- (publisher, idempotency key): the same key with the same request (request_sha256) is answered
-- again, with another request a 409. 'expired' is not stored: a prepared row past expires_at.
-- At confirmation the row keeps who confirmed and the command sent, so that a page reloaded after
-- a failure to produce sends the same command again (the same purchase, the same decision).
-- A held payment (capture 'hold') keeps how long its hold lasts from the confirmation, and the
-- first capture or void its publisher asked for (`finish_command`): a retry of the same request
-- sends the same command again, so it is answered with the same fact.
CREATE TABLE prepared_payments (
    payment_id      text        PRIMARY KEY,
    publisher_id    text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_sha256  text        NOT NULL CHECK (request_sha256 ~ '^[0-9a-f]{64}$'),
    amount_cents    bigint      NOT NULL CHECK (amount_cents > 0),
    category        text        NOT NULL,
    description     text        NOT NULL,
    content_id      text,
    capture         text        NOT NULL CHECK (capture IN ('immediate', 'hold')),
    nonce           text        NOT NULL UNIQUE,
    status          text        NOT NULL CHECK (status IN ('prepared', 'confirmed', 'cancelled')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    confirmed_at    timestamptz,
    cancelled_at    timestamptz,
    isp_id          text,
    account_id      text,
    user_id         text,
    consent         text        CHECK (consent IS NULL OR consent ~ '^[0-9a-f]{64}$'),
    command         bytea,
    hold_seconds    integer     CHECK (hold_seconds BETWEEN 60 AND 604800),
    finish_command  bytea,
    CHECK ((capture = 'hold') = (hold_seconds IS NOT NULL)),
    UNIQUE (publisher_id, idempotency_key)
);

-- Single use: an assertion's nonce is inserted here by the statement that marks its payment
-- confirmed; a second use finds it (refused: reused).
CREATE TABLE confirmations_used (
    nonce       text        PRIMARY KEY,
    payment_id  text        NOT NULL,
    consent     text        NOT NULL CHECK (consent ~ '^[0-9a-f]{64}$'),
    used_at     timestamptz NOT NULL
);

-- The identity component's (`ledger idp`, the ISPs' side) subscriber credentials: a login per
-- (ISP, account, user) and the scrypt hash of its password. Only the idp reads or writes it; the
-- platform never sees a password (it is returned once, by the idp, to the operator).
CREATE TABLE idp_credentials (
    isp_id          text        NOT NULL,
    login           text        NOT NULL,
    account_id      text        NOT NULL,
    user_id         text        NOT NULL,
    scrypt_salt     bytea       NOT NULL,
    scrypt_hash     bytea       NOT NULL,
    issued_at       timestamptz NOT NULL,
    PRIMARY KEY (isp_id, login)
);
