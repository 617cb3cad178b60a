TRUNCATE audit_log, invoices, memberships, users, accounts RESTART IDENTITY;
