-- Multi-byte text in identifiers, strings and comments (columns count bytes).
CREATE TABLE "naïve" (café text, "日本" int); /* коммент; */
INSERT INTO "naïve" VALUES ('é;è', 1), ('🙂;', 2);
SELECT café, "日本" FROM "naïve" WHERE café <> 'ü'; SELECT 'ñ' AS enye;
CREATE FUNCTION café$x() RETURNS text LANGUAGE sql AS $é$ SELECT 'é$;' $é$;
SELECT café$x();
