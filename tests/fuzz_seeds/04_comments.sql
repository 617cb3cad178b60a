-- A leading comment psql drops; the next block comment is sent with its statement.
/* header; with a semicolon */
CREATE TABLE c (id int); -- trailing comment; with a semicolon
/* nested /* comments; */ still inside; */ SELECT 1 /* in; the middle */ AS one;
SELECT 2 -- to the end of the line;
  AS two;
SELECT 3 +/* a comment right after an operator */ 4, 5 -- 6
  - 1;
/* a comment-only statement */;
/**/ SELECT /***/ 7 /* ** / * */ AS seven /*/ still comment */;
SELECT 8 /* multi
line; comment
*/ AS eight;
/* /* /* deep */ */ */ SELECT 9;
SELECT 10 --no space
;
SELECT '--not a comment' AS dashes, '/* nor this */' AS slashes;
-- the end
