"""The core service over mutual TLS: ASGI application, client identity, serving."""
