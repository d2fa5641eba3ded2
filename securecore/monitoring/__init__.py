"""Metrics of the core service (Prometheus) and the alerting rules that go with them."""
