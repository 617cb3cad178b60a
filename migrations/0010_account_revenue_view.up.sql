CREATE VIEW account_revenue AS
SELECT a.id AS account_id,
       a.name,
       coalesce(sum(i.amount_cents) FILTER (WHERE i.status = 'paid'), 0) AS paid_cents,
       coalesce(sum(i.amount_cents) FILTER (WHERE i.status = 'issued'), 0) AS open_cents
FROM accounts a
LEFT JOIN invoices i ON i.account_id = a.id
GROUP BY a.id, a.name;
