"""Prometheus scraping the running app: the alerts fire on the fault they are for."""
