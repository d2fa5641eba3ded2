"""Security incidents: the record of each one, kept by the core service (REQ-IR).

An incident's record (severity, impact, phase, scope, timeline of actions,
linked evidence bundles, verifications, closing) lives in the core because
every change to it must be an audit record, and the core's audit log is the
toolkit's one tamper-evident, replicated store: each change is appended to
the audit log in the same step as the state database's view of it, which
the admin API (`/v1/admin/incidents`, `securecore incident`) reads.
"""
