"""Compliance checks for ISO 27001:2022 and SOC 2, checklists and evidence bundles."""

__version__ = "0.1.0"
