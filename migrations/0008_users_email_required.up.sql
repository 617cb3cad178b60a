ALTER TABLE users ALTER COLUMN email_normalized SET NOT NULL;
