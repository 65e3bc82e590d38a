"""``settings.flags``: where a process reads its flags from.

Kept apart from the flag board so that the policy model can declare it without importing the
board, and each source's own options stay in that source's module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ._flags_openfeature import OpenFeatureOptions
from ._flags_redis import RedisFlagOptions

__all__ = ["FlagSettings"]


class FlagSettings(BaseModel):
    """``settings.flags``: the sources of kill switches and flags, beside the in-process API.

    Precedence, highest first: the in-process API, ``redis``, ``file``, ``openfeature``, the
    environment, then the ``mode:`` the policy declares.
    """

    # A nested error's input is shown as this model's config says: a Redis URL may hold a
    # password.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    env_prefix: str | None = Field(
        default="RESILIENCE_FLAG_",
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Prefix of the environment variables read as flags "
        "(RESILIENCE_FLAG_SEARCH__SESSION=off); null: ignore the environment.",
    )
    file: str | None = Field(
        default=None,
        min_length=1,
        description="A flags file, watched for changes; relative to the policy file.",
    )
    redis: RedisFlagOptions | None = Field(
        default=None,
        description="The fleet's flags in Redis, as resilience flags set writes them.",
    )
    openfeature: OpenFeatureOptions | None = Field(
        default=None,
        description="Read flags from the application's OpenFeature provider (the openfeature "
        "extra).",
    )
