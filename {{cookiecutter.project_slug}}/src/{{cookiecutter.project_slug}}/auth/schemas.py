from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator


class Login(BaseModel):
    email: EmailStr
    # 128 caps the hashing cost a single request can ask for.
    password: str = Field(min_length=1, max_length=128)

    @field_validator("email")
    @classmethod
    def _normalise_email(cls, value: str) -> str:
        return value.strip().lower()


class Registration(Login):
    # 12+ characters: length beats composition rules (NIST SP 800-63B).
    password: str = Field(min_length=12, max_length=128)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    email: str
    is_staff: bool
    created_at: datetime


class RegistrationAccepted(BaseModel):
    """The answer to every valid registration, whether the email was free or taken."""

    email: str
    detail: str = (
        "Registration received: we sent an email to this address. If the account is new, "
        "you can sign in now."
    )


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105  # a scheme name, not a secret
    expires_in: int = Field(description="Seconds until the token expires.")
