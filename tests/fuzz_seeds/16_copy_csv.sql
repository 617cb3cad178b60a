-- COPY ... FROM STDIN in CSV, whose data may hold commas, quotes and empty strings.
CREATE TABLE csv_rows (id int, label text);
COPY csv_rows FROM STDIN WITH (FORMAT csv); -- a comment after the COPY is fine
1,plain
2,"with, comma"
3,"with ""quotes"""
4,
5,""
\.
CREATE TABLE csv_crlf (a text, b text);
COPY csv_crlf (a, b) FROM stdin (FORMAT csv, HEADER true);
a,b
"x,y",
\.
SELECT count(*) FROM csv_rows;
