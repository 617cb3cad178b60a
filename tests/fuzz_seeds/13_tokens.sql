-- Numbers, casts, psql-variable lookalikes, operators that touch comments.
CREATE TABLE nums (a numeric, b int[]);
INSERT INTO nums VALUES (1.5e3, '{1,2,3}'), (.5, ARRAY[4,5]), (5., '{}'), (1e-3, NULL);
SELECT a::text, b[1:2], b[2:], (b)[:1], '1'::int + 2 FROM nums;
SELECT 1 AS x WHERE 3 > 2; SELECT 4-1 AS y, 5--1
  AS z;
SELECT 2 -/* comment after minus */1 AS w;
SELECT '{1}'::int[] @> '{1}' AS contains, 2 ^ 3 AS pow, 7 % 3 AS modulo;
CREATE FUNCTION named(a int, b int DEFAULT 0) RETURNS int LANGUAGE sql AS 'SELECT a + b';
SELECT named(a := 1, b => 2), named(b=>1,a:=3);
