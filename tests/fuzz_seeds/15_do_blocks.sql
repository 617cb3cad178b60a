-- PL/pgSQL blocks, as the harbor migrations use them.
CREATE TABLE flags (name text PRIMARY KEY, on_ boolean);
DO $$
DECLARE
  r record;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM flags WHERE name = 'x') THEN
    INSERT INTO flags VALUES ('x', true);
  END IF;
  FOR r IN SELECT * FROM flags LOOP
    RAISE NOTICE 'flag %; %', r.name, r.on_;
  END LOOP;
END $$;
DO LANGUAGE plpgsql $body$
BEGIN
  PERFORM 1; -- $$ inside another tag
  EXECUTE 'SELECT ''$$;''';
END
$body$;
CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.name := lower(NEW.name);
  RETURN NEW;
END;
$$;
CREATE TRIGGER flags_lower BEFORE INSERT ON flags FOR EACH ROW EXECUTE FUNCTION trg();
CREATE OR REPLACE TRIGGER flags_lower BEFORE INSERT ON flags FOR EACH ROW EXECUTE PROCEDURE trg();
INSERT INTO flags VALUES ('Y', false);
