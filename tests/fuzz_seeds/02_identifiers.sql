-- Quoted identifiers: doubled quotes, semicolons, Unicode escapes.
CREATE TABLE "weird;table" ("a""b" int, "c;d" text, "--x" int, "/*y*/" int);
INSERT INTO "weird;table" ("a""b", "c;d", "--x", "/*y*/") VALUES (1, 'x', 2, 3);
SELECT U&"d\0061t\+000061" FROM (SELECT 1 AS data) s;
SELECT u&"!0061" UESCAPE '!' FROM (SELECT 2 AS a) s;
SELECT "a""b" AS "x;y", "c;d" FROM "weird;table";
CREATE TABLE "Mixed Case ""quoted"" name" (id int);
DROP TABLE "Mixed Case ""quoted"" name";
