"""Payments: start a payment through a provider, and apply the provider's signed webhooks."""
