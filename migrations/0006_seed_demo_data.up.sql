-- Demo data, so the later migrations have rows to work on.
INSERT INTO accounts (name, plan) VALUES ('Acme', 'team'), ('Globex', 'enterprise'), ('Initech', 'free');
INSERT INTO users (email, full_name) VALUES
    ('Ada@Acme.example', 'Ada Lovelace'),
    ('grace@acme.example', 'Grace Hopper'),
    ('HANK@globex.example', 'Hank Scorpio'),
    ('peter@initech.example', 'Peter Gibbons'),
    ('milton@initech.example', 'Milton Waddams');
INSERT INTO memberships (account_id, user_id, role) VALUES
    (1, 1, 'owner'), (1, 2, 'admin'), (2, 3, 'owner'), (3, 4, 'member'), (3, 5, 'member');
INSERT INTO invoices (account_id, amount_cents, status, issued_at) VALUES
    (1, 4900, 'paid', now() - interval '40 days'),
    (1, 4900, 'issued', now() - interval '10 days'),
    (2, 99000, 'issued', now() - interval '3 days');
UPDATE invoices SET status = 'paid' WHERE id = 2;
