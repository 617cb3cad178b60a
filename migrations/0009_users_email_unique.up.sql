-- moonshift:no-transaction
-- Built without blocking writes; if it fails, the migration stays dirty and status says so.
CREATE UNIQUE INDEX CONCURRENTLY users_email_normalized_key ON users (email_normalized);
