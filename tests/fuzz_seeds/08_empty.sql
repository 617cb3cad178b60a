;
;; ;
SELECT 1;;
/* nothing */ ; -- nothing either
SELECT 2; ; SELECT 3
;
