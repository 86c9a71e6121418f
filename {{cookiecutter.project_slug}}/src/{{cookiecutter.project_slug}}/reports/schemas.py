from __future__ import annotations

from datetime import date
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_DAYS = 366


class SalesReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: date = Field(description="First day (UTC), inclusive.")
    end: date = Field(description="Last day (UTC), inclusive.")

    @model_validator(mode="after")
    def _a_sane_range(self) -> Self:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        if (self.end - self.start).days + 1 > MAX_DAYS:
            raise ValueError(f"a report covers at most {MAX_DAYS} days")
        return self
