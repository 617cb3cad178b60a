-- Quotes of every kind, each hiding a semicolon.
CREATE TABLE notes (id int, body text);
INSERT INTO notes VALUES (1, 'it''s; fine'), (2, ';'), (3, '');
INSERT INTO notes VALUES (4, 'C:\'); INSERT INTO notes VALUES (5, 'a\\b;');
INSERT INTO notes VALUES (6, E'escaped \' quote; and \\ backslash'), (7, e'\'');
INSERT INTO notes VALUES (8, E'octal \101\102 hex \x41 unicode \u0041;'), (9, E'a''b\\');
INSERT INTO notes VALUES (10, U&'d\0061t\+000061; '), (11, u&'!0041;' UESCAPE '!');
INSERT INTO notes VALUES (12, N'national; string'), (13, n'x');
SELECT B'1010', X'1F', b'0', x'', 'str'
  'ing' AS glued;
SELECT 'first part; '
  'continued on the next line;'
  -- a comment between the parts
  'and another' AS continued;
INSERT INTO notes VALUES (14, 'multi
line; string
'), (15, E'multi\
line');
SELECT count(*) FROM notes WHERE body LIKE '%;%';
SELECT 'E''' AS e_inside, 'U&' AS u, E'\\' AS lone;SELECT 1 AS same_line;
