CREATE TABLE audit_log (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
);

CREATE FUNCTION audit_invoice_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO audit_log (actor, action, detail)
        VALUES (current_user, 'invoice.status',
                jsonb_build_object('invoice', NEW.id, 'from', OLD.status, 'to', NEW.status));
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER invoices_audit_status
    AFTER UPDATE OF status ON invoices
    FOR EACH ROW EXECUTE FUNCTION audit_invoice_status();
