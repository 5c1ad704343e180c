-- Ids are compared as bytes (collation "C"), not by the database's locale: every primary-key insert,
-- the batch's DISTINCT ON and the customer_stats upsert compare ids, and a locale comparison
-- (strcoll) costs several times a byte comparison. Ids have no linguistic order to keep.
-- Rewrites both tables and their indexes once, under an exclusive lock.
ALTER TABLE orders ALTER COLUMN order_id TYPE text COLLATE "C";
ALTER TABLE orders ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE customer_stats ALTER COLUMN customer_id TYPE text COLLATE "C";
