

CREATE TABLE blank (

  id int,


  body text
);

INSERT INTO blank VALUES (1, 'kept

blank lines in a string');
   
SELECT 1 /* kept

in a comment */, $$kept

in a dollar quote$$,
    
  2;


