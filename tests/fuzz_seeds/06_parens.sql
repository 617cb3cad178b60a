-- psql does not end a statement at a semicolon inside parentheses: multi-action rules.
CREATE TABLE a (x int);
CREATE TABLE b (x int);
CREATE TABLE src (x int);
CREATE RULE fan_out AS ON INSERT TO src DO ALSO (
  INSERT INTO a VALUES (NEW.x);
  INSERT INTO b VALUES (NEW.x * 2)
);
INSERT INTO src VALUES (1);
SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM b) AS total;
SELECT ((1 + (2)) * (3));
