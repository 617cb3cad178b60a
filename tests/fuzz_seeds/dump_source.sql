-- The schema pg_dump is run on: functions, triggers, views, and data worth a COPY.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE accounts (
  id serial PRIMARY KEY,
  "User Name" text NOT NULL,
  balance numeric(12, 2) DEFAULT 0,
  feeling mood,
  tags text[],
  meta jsonb,
  score positive,
  created timestamptz DEFAULT '2024-01-01 00:00:00+00',
  name_len int GENERATED ALWAYS AS (length("User Name")) STORED
);
COMMENT ON TABLE accounts IS 'accounts; with a semicolon and a ''quote''';
CREATE TABLE audit (id bigserial PRIMARY KEY, account int, what text);
CREATE FUNCTION audit_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (account, what) VALUES (NEW.id, TG_OP || '; dollars $ inside');
  RETURN NEW;
END;
$$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE ON accounts
  FOR EACH ROW EXECUTE FUNCTION audit_trigger();
CREATE FUNCTION dollars() RETURNS text LANGUAGE sql AS $fn$ SELECT '$$;' $fn$;
CREATE FUNCTION atomic_total() RETURNS numeric LANGUAGE sql
BEGIN ATOMIC
  SELECT sum(balance) FROM accounts;
END;
CREATE PROCEDURE bump(amount numeric) LANGUAGE sql
BEGIN ATOMIC
  UPDATE accounts SET balance = balance + amount;
END;
CREATE VIEW rich AS SELECT "User Name", balance FROM accounts WHERE balance > 100;
CREATE MATERIALIZED VIEW moods AS SELECT feeling, count(*) AS n FROM accounts GROUP BY feeling;
CREATE INDEX accounts_tags ON accounts USING gin (tags);
INSERT INTO accounts ("User Name", balance, feeling, tags, meta, score) VALUES
  ('ada', 150.50, 'happy', '{a,b}', '{"k": "v;1"}', 1),
  (E'tab\there', 0, 'sad', '{}', '{"quote": "\"x\" \\ ;"}', 2),
  (E'new\nline; and \\ backslash', -5, NULL, NULL, NULL, NULL),
  ('dé 🙂', 1000, 'ok', '{"with space","semi;colon"}', '[1, 2]', 3);
CALL bump(1);
REFRESH MATERIALIZED VIEW moods;
CREATE TABLE empty_one (x int);
CREATE TABLE lines (n int, body text);
INSERT INTO lines SELECT g, repeat('x', g % 7) || '\.' FROM generate_series(1, 50) g;
