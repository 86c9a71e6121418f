"""Every scheduled job, in one place. Each interval comes from a setting; 0 switches it off."""

from __future__ import annotations

from typing import Any

from {{ cookiecutter.project_slug }}.config import Settings

# A tick that waited this many intervals in the queue (workers were down) is dropped: the
# next tick does the same work, so a backlog of identical runs helps nobody.
EXPIRES_AFTER_INTERVALS = 3


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}

    def every(name: str, task: str, seconds: float) -> None:
        if seconds <= 0:
            return
        entries[name] = {
            "task": task,
            "schedule": seconds,
            "options": {"expires": max(seconds * EXPIRES_AFTER_INTERVALS, 10.0)},
        }

    every(
        "expire-unpaid-orders",
        "orders.expire_unpaid",
        settings.schedule_expire_unpaid_orders_seconds,
    )
    every(
        "revenue-rollup", "reports.rollup_daily_revenue", settings.schedule_revenue_rollup_seconds
    )
    every("cleanup-stale-data", "jobs.cleanup_stale_data", settings.schedule_cleanup_seconds)
    every("sweep-uploads", "uploads.sweep_abandoned", settings.schedule_upload_sweep_seconds)
    return entries
