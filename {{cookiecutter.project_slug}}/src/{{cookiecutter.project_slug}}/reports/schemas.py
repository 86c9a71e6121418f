from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_DAYS = 366
# No shop sold anything before this; a later end than tomorrow (UTC) reports the future.
EARLIEST = date(2000, 1, 1)


class SalesReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: date = Field(description="First day (UTC), inclusive.")
    end: date = Field(description="Last day (UTC), inclusive.")

    @model_validator(mode="after")
    def _a_sane_range(self) -> Self:
        # Checked here, not in the worker: 9999-12-31 would be accepted, then dead-letter.
        latest = datetime.now(UTC).date() + timedelta(days=1)
        if self.start < EARLIEST or self.end > latest:
            raise ValueError(f"a report covers days from {EARLIEST} to {latest}")
        if self.end < self.start:
            raise ValueError("end must not be before start")
        if (self.end - self.start).days + 1 > MAX_DAYS:
            raise ValueError(f"a report covers at most {MAX_DAYS} days")
        return self
