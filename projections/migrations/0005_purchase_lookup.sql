-- The checkout API looks a publisher's purchase up by its id, and the refunds of it, in any age
-- (issue 12, part 5: it knew only the last day of ledger.events). Without these, each lookup read
-- the whole table.
CREATE INDEX purchases_by_purchase_id ON purchases (purchase_id, publisher_id);
CREATE INDEX refunds_by_purchase_id ON refunds (purchase_id, account_id);
