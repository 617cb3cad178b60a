SELECT 1;
\set x 1
SELECT :x \; SELECT 2 \g
\i file.sql
