CREATE TABLE invoices (
    id           bigserial PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE RESTRICT,
    amount_cents bigint NOT NULL,
    currency     char(3) NOT NULL DEFAULT 'EUR',
    status       text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'issued', 'paid', 'void')),
    issued_at    timestamptz
);
CREATE INDEX invoices_account_id ON invoices (account_id);
