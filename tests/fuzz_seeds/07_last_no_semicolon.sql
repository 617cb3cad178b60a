CREATE TABLE t (id int);
INSERT INTO t VALUES (1);
SELECT id
  FROM t
  WHERE id = 1

-- a trailing comment after the last statement, which has no semicolon
  
