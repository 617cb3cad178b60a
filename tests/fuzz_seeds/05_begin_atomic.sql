-- SQL-standard bodies: the semicolons inside BEGIN ATOMIC ... END do not end the statement.
CREATE TABLE log (msg text);
CREATE FUNCTION f_atomic(x int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO log VALUES ('called');
  SELECT CASE WHEN x > 0 THEN x ELSE -x END;
END;
CREATE OR REPLACE FUNCTION f_atomic2(x int) RETURNS int LANGUAGE sql
begin atomic
  select case when x > 0 then case when x > 10 then 10 else x end else 0 end;
end;
CREATE PROCEDURE p_atomic(v text) LANGUAGE sql
BEGIN ATOMIC
  INSERT INTO log VALUES (v);
  INSERT INTO log VALUES (v || ';');
END;
create or replace procedure p_atomic2() language sql begin atomic insert into log values ('x'); end;
CALL p_atomic('hello'); CALL p_atomic2();
SELECT f_atomic(-3), f_atomic2(42);
CREATE FUNCTION f_return(x int) RETURNS int LANGUAGE sql RETURN CASE WHEN x > 0 THEN 1 END;
SELECT f_return(1);
BEGIN;
SELECT CASE WHEN true THEN 'case outside a function' END;
END;
CREATE FUNCTION f_plpgsql() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
CREATE OR REPLACE FUNCTION f_parens(x int) RETURNS int LANGUAGE sql
BEGIN ATOMIC
  SELECT (CASE WHEN x > 0 THEN 1 ELSE 2 END) + 1;
END;
SELECT f_plpgsql(), f_parens(1);
