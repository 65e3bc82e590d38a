"""Deterministic holdout assignment: which users never get personalization.

A holdout keeps a fixed share of users un-personalized so that the effect of personalization
can be measured against them. Assignment is a pure function of a salt and the user id, so every
service, process and language that knows the salt puts a user in the same group, with no
shared state.

The hash, exactly (portable to any language)::

    key    = salt + ":" + user_id                      # encoded as UTF-8, no normalization
    digest = SHA-256(key)                              # 32 bytes
    bucket = (first 8 bytes of digest, as an unsigned big-endian 64-bit integer) mod 10000

In Python: ``int.from_bytes(sha256(f"{salt}:{user_id}".encode("utf-8")).digest()[:8], "big")
% 10_000``. A user is held out when ``bucket < percent * 100``, so ``percent`` moves in steps
of 0.01 (one bucket) and raising it only adds users, never swaps them.

Why this hash: SHA-256 is in the standard library of every language and platform (and in
``openssl``/``sha256sum``), so other services can reproduce an assignment byte for byte; and
reducing 64 bits modulo 10,000 has a bias of at most 10,000 / 2**64 (about 5e-16) per bucket,
far below anything measurable. Only the first 8 bytes are used so that implementations need
nothing beyond an unsigned 64-bit integer.

The user id is taken as given (case, whitespace and Unicode normalization included): callers
must pass the same canonical id everywhere. The salt should not contain ":", or salt "a:b" with
id "c" and salt "a" with id "b:c" hash the same key. Changing the salt reassigns every user,
independently of the old assignment; keep it permanent for the life of the holdout.

A request without a user id (``None`` or ``""``) is never held out: anonymous traffic cannot be
followed across requests, so holding it out would measure nothing and only degrade search.
``TEST_VECTORS`` lists (salt, user id, bucket) triples for checking other implementations.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BUCKETS", "TEST_VECTORS", "HoldoutOptions", "bucket", "in_holdout", "salted_digest"]

#: Number of buckets; one bucket is 0.01 percent of users.
BUCKETS = 10_000

# Tolerance when checking that percent * 100 is a whole number of buckets: floats such as 0.07
# are not exact (0.07 * 100 == 7.000000000000001), yet mean exactly 7 buckets.
_STEP_TOLERANCE = 1e-6


def salted_digest(salt: str, user_id: str) -> bytes:
    """SHA-256 of ``salt + ":" + user_id`` in UTF-8: the holdout bucket and the exposure log's
    user hash both come from it."""
    # surrogatepass: an id with a lone surrogate (possible from JSON) still has a digest
    return hashlib.sha256(f"{salt}:{user_id}".encode("utf-8", "surrogatepass")).digest()


def bucket(salt: str, user_id: str) -> int:
    """The bucket (0 to 9,999) of ``user_id`` under ``salt``; see the module docstring."""
    return int.from_bytes(salted_digest(salt, user_id)[:8], "big") % BUCKETS


class HoldoutOptions(BaseModel):
    """A holdout: a permanent salt and the share of users held out."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    salt: str = Field(
        min_length=1,
        pattern=r"^[^:]+$",
        description="Permanent salt of the holdout (no ':'); changing it reassigns every user",
    )
    percent: float = Field(
        default=5.0, ge=0, le=50, description="Share of users held out, in percent (0.01 steps)"
    )

    @model_validator(mode="after")
    def _whole_buckets(self) -> HoldoutOptions:
        scaled = self.percent * 100
        if abs(scaled - round(scaled)) > _STEP_TOLERANCE:
            raise ValueError(
                f"percent {self.percent!r} is not a whole multiple of 0.01, the size of one "
                f"bucket; round it to two decimals (e.g. {round(self.percent, 2)!r})"
            )
        return self

    @property
    def buckets_held_out(self) -> int:
        """How many of the 10,000 buckets are held out (``percent * 100``)."""
        return round(self.percent * 100)


def in_holdout(options: HoldoutOptions, user_id: str | None) -> bool:
    """Whether ``user_id`` is held out; anonymous requests (None or "") never are."""
    if not user_id:
        return False
    return bucket(options.salt, user_id) < options.buckets_held_out


#: (salt, user_id, bucket) triples, for checking other implementations of ``bucket``.
#: The empty id has a bucket but is never held out (see ``in_holdout``); "Zo\u00eb" and
#: "Zoe\u0308" (the same name, NFC and NFD) differ because ids are not normalized; the last two
#: share a bucket because both hash "a:b:c" (a salt should not contain ":").
TEST_VECTORS: tuple[tuple[str, str, int], ...] = (
    ("holdout-2024", "u-7", 3461),
    ("holdout-2024", "u-8", 5871),
    ("holdout-2024", "user@example.com", 137),
    ("holdout-2024", "", 6573),
    ("holdout-2024", " ", 9359),
    ("holdout-2024", "0", 3166),
    ("holdout-2024", "\t", 182),
    ("salt", "Zo\u00eb", 871),
    ("salt", "Zoe\u0308", 5630),
    ("salt", "\u7528\u6237-42", 7069),
    ("salt", "\U0001f600", 6107),
    ("a:b", "c", 7426),
    ("a", "b:c", 7426),
)
