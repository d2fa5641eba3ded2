"""Plugins of the core service: registry, registration flow, trust scores."""
