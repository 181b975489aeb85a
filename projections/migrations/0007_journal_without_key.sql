-- Issue 13: the journal is written at five legs a purchase, and its primary key (event_id, leg)
-- was the costliest thing the projection writer did in PostgreSQL: a B-tree insert per leg at a
-- random place of an index as large as the table (measured with ledger bench projections' facts,
-- 5,000-event batches: PostgreSQL's CPU 32 -> 22 us a fact, the journal's COPY 11-12 -> 4-7 us of
-- wall time). Nothing looks a posting up by its key: reconcile and the fact check read the
-- journal whole. A leg is still written once: the legs of a fact are copied in the transaction
-- that inserts its id into applied_events (whose key refuses a second), and the fact check
-- (`ledger reconcile`) compares each fact's postings with its journal rows, one for one.
ALTER TABLE journal DROP CONSTRAINT journal_pkey;
