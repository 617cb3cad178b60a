-- COPY ... FROM stdin with inline data, as pg_dump writes it and as people write it.
CREATE TABLE people (id int, name text, note text);
COPY people (id, name, note) FROM stdin;
1	ada	tab\there
2	bob	back\\slash
3	cy	new\nline
4	\N	semi;colon
5	dé	'quoted' "double" $$dollar$$ /* not a comment */ -- nor this
\.
CREATE TABLE empty_copy (x int);
COPY empty_copy FROM stdin;
\.
CREATE TABLE looks_like_sql (line text);
copy looks_like_sql from stdin;
SELECT 'this line is data, not a statement';
-- also data
\\.
\.
CREATE TABLE upper_case (x int);
COPY upper_case FROM STDIN
;
42
\.
SELECT count(*) FROM people;
