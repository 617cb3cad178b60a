-- Accounts: the tenants of the service.
CREATE TABLE accounts (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    plan       text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'team', 'enterprise')),
    created_at timestamptz NOT NULL DEFAULT now()
);
