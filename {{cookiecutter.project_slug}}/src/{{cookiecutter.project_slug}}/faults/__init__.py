"""Fault routes for the fault-injection proofs; mounted only when ENVIRONMENT=test."""
