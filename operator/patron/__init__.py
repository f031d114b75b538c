"""Patron: a Kubernetes operator that enforces customer-impact SLOs."""

__version__ = "0.1.0"
