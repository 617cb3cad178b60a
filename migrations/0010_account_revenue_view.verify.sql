SELECT paid_cents = 9800 FROM account_revenue WHERE name = 'Acme';
