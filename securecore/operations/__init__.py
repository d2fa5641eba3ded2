"""Operating the service: backup and restore, the emergency snapshot, the facts for compliance."""
