-- Dollar quotes: tags, nesting, lookalikes that are not quotes.
CREATE FUNCTION add_one(int) RETURNS int LANGUAGE sql AS $$ SELECT $1 + 1; $$;
CREATE FUNCTION tagged() RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
  -- an inner, differently tagged quote holds $$ and ;
  RETURN $inner$ has $$ and ; and $fn without end $inner$ || $$;$$;
END;
$fn$;
CREATE FUNCTION under() RETURNS text LANGUAGE sql AS $_$ SELECT 'x;' $_$;
CREATE FUNCTION cased() RETURNS text LANGUAGE sql AS $Tag$ SELECT '$tag$;' $Tag$;
CREATE FUNCTION digits() RETURNS text LANGUAGE sql AS $a1$ SELECT '$1$;' $a1$;
CREATE TABLE money (a$b$ int, c$ int, "$$" int);
INSERT INTO money VALUES (1, 2, 3);
SELECT a$b$, c$ FROM money;
PREPARE q(int, int) AS SELECT $1 + $2;
EXECUTE q(1, 2);
SELECT add_one(1), tagged(), under(), cased(), digits();
SELECT $$;$$ AS a, $x$ $$ ; $x$ AS b, $$$$ AS empty, $q$$q$ AS also_empty;
SELECT $a$x$junk$a$ AS rescan, $b$$c$$b$ AS b;
SELECT $body$
multi-line; body with $ signs $ and $5 and $$ too
$body$ AS multi;
