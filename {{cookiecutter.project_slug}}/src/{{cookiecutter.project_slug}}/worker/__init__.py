"""Background work: the Celery app, what each worker process owns, and the beat schedule."""
