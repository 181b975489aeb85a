-- Issue 12: an event id names one fact, and the projection writer never skips a fact silently.
--
-- Each applied id keeps the fingerprint of its fact (SHA-256 of its canonical form,
-- schemas.facts.fact_fingerprint) and its type: a fact arriving under an id already applied is a
-- duplicate when the fingerprints are equal, and stops the writer when they differ. Ids applied
-- before this migration have no fingerprint: a repeat of one counts as a duplicate, as it did;
-- `ledger reconcile` compares their facts with the topic all the same.
ALTER TABLE applied_events
    ADD COLUMN fingerprint bytea CHECK (octet_length(fingerprint) = 32),
    ADD COLUMN type text;

-- Rejections projected under an id of the old scheme, which did not name the outcome
-- (`{kind}.{key}.{fingerprint16}`, then `.{origin}` for a rejection decided afresh each time),
-- take the id the decoder reads them under now (schemas.facts.upcast_event_id), in every table
-- that holds it, so that the live projections equal a replay and a rejection emitted again after
-- the upgrade is a duplicate of the one applied before.
CREATE TEMP TABLE renamed_rejections (
    old_id  text PRIMARY KEY,
    new_id  text NOT NULL UNIQUE
) ON COMMIT DROP;

INSERT INTO renamed_rejections
SELECT event_id, prefix || left(rest, 16) || '.rejected.' || reason || substr(rest, 17)
FROM (SELECT event_id, reason, 'purchase.' || purchase_id || '.' AS prefix,
             substr(event_id, length(purchase_id) + 11) AS rest
      FROM purchases WHERE decision = 'rejected') AS p
WHERE left(event_id, length(prefix)) = prefix AND rest ~ '^[0-9a-f]{16}(\.[0-9]+)?$';

INSERT INTO renamed_rejections
SELECT event_id, prefix || left(rest, 16) || '.rejected.' || reason || substr(rest, 17)
FROM (SELECT event_id, reason, 'refund.' || refund_id || '.' AS prefix,
             substr(event_id, length(refund_id) + 9) AS rest
      FROM refunds WHERE decision = 'rejected') AS r
WHERE left(event_id, length(prefix)) = prefix AND rest ~ '^[0-9a-f]{16}(\.[0-9]+)?$';

INSERT INTO renamed_rejections
SELECT event_id, event_id || '.rejected.' || (fact->>'reason')
FROM (SELECT event_id, fact, 'command.' || (fact->>'command_id') || '.' AS prefix
      FROM account_facts WHERE type = 'command.rejected.v1') AS c
WHERE left(event_id, length(prefix)) = prefix
  AND substr(event_id, length(prefix) + 1) ~ '^[0-9a-f]{16}$';

UPDATE purchases SET event_id = r.new_id
FROM renamed_rejections r WHERE purchases.event_id = r.old_id AND purchases.decision = 'rejected';
UPDATE refunds SET event_id = r.new_id
FROM renamed_rejections r WHERE refunds.event_id = r.old_id AND refunds.decision = 'rejected';
UPDATE account_facts SET event_id = r.new_id, fact = jsonb_set(fact, '{event_id}', to_jsonb(r.new_id))
FROM renamed_rejections r
WHERE account_facts.event_id = r.old_id AND account_facts.type = 'command.rejected.v1';
UPDATE applied_events SET event_id = r.new_id
FROM renamed_rejections r WHERE applied_events.event_id = r.old_id;
