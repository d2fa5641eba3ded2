"""The service's state: its tables on SQLite or PostgreSQL, and write transactions."""
