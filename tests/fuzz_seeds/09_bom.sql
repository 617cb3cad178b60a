-- starts with a UTF-8 byte order mark
CREATE TABLE bom (id int);
SELECT 1 AS after_bom;
