-- moonshift:no-transaction
DROP INDEX CONCURRENTLY users_email_normalized_key;
