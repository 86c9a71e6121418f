"""Domain events: what the shop announces (events.py) and who listens (handlers.py)."""
