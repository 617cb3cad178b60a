-- Sqitch-style verification: the query must succeed and return true.
SELECT count(*) = 0 FROM invoices WHERE amount_cents < 0;
