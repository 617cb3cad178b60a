-- CRLF line endings everywhere
CREATE TABLE crlf (id int,
  name text);

INSERT INTO crlf VALUES (1, 'a
b');
CREATE FUNCTION crlf_f() RETURNS int LANGUAGE plpgsql AS $$
BEGIN

  RETURN 1;
END
$$;
CREATE TABLE crlf_data (id int, name text);
COPY crlf_data FROM stdin;
2	x
3	\N
\.
SELECT crlf_f(), count(*) FROM crlf -- no semicolon
