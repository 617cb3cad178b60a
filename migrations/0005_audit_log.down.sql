DROP TRIGGER invoices_audit_status ON invoices;
DROP FUNCTION audit_invoice_status();
DROP TABLE audit_log;
