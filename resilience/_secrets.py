"""Redis credentials: from the environment or a file, and never shown.

Every Redis connection the engine makes (the session store, fleet-wide breakers, the fleet's
flags, the ``stream_lag`` guard's watermark) is declared with the same keys,
:class:`RedisConnection`: ``url`` or ``url_env`` for where, and ``password_env`` or
``password_file`` for the password. A password written in ``url`` is accepted, and
``resilience validate`` warns that the secret is in the policy file.

What leaves the process names a Redis by ``host:port`` (:func:`redis_where`) or by its URL with
the password masked (:func:`redact_url`): the options' ``repr``, their dump (which
``resilience explain`` prints and config versions hash), error messages and events. Errors name
the option and the variable or file, never a value, and never echo the URL: Python's URL parser
quotes the part it could not read, which for a mistyped URL can be the password.

A ``password_file`` is read when the connection is set up (a missing, unreadable or empty file
fails the build, naming the option) and again by every new connection, so a secret rotated in
place (Kubernetes updates a mounted secret's file) reaches new connections without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
)

__all__ = [
    "REDACTED",
    "FileCredentials",
    "RedisConnection",
    "read_secret_file",
    "redact_url",
    "redis_where",
    "url_has_password",
]

#: What a password is replaced with wherever a URL is shown.
REDACTED = "***"

#: A password file larger than this is refused: the path most likely names the wrong file
#: (/dev/zero would otherwise never finish reading).
MAX_SECRET_BYTES = 64 * 1024

_SCHEMES = frozenset({"redis", "rediss", "unix"})
# redis-py reads credentials from the query too (?password=...).
_SECRET_QUERY_KEYS = frozenset({"password"})


def _userinfo(netloc: str) -> tuple[str, str | None, str]:
    """``(user, password or None, host part)`` of a URL's netloc, without parsing the port."""
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return "", None, netloc
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None), host


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its user info or its query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ":" in url.rpartition("@")[0]  # unparsable: judge by its shape
    if _userinfo(parts.netloc)[1]:
        return True
    return any(key in _SECRET_QUERY_KEYS for key, _ in parse_qsl(parts.query))


def redact_url(url: str) -> str:
    """``url`` with its password (user info or query) replaced by ``***``, for display.

    Reads the user info as everything up to the last ``@``, not as a URL parser would: a
    password with an unencoded ``/`` or ``?`` ends a parser's host part early, and would then
    be shown as the path.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, tail = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:{REDACTED}@{tail}"
        url = f"{scheme}{sep}{rest}"
    elif "@" in url:
        return "<not a URL>"
    base, question, query = url.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(k, REDACTED if k in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
        url = f"{base}?{query}{hash_}{fragment}"
    return url


def redis_where(url: str) -> str:
    """``host:port`` of ``url`` (or a socket's path): how messages and events name a Redis."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path or "?"
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "an unparsable URL"


def check_url(url: str, label: str) -> None:
    """Refuse a URL redis-py could not use, in words that never quote it.

    Raises:
        ValueError: the URL cannot be parsed, or its scheme is not redis, rediss or unix.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        # Not ``from`` the parser's error: it quotes the text it could not read.
        raise ValueError(
            f"{label} is not a valid Redis URL: write redis://host:port/db (rediss:// for "
            "TLS, unix:///path for a socket), with any password %-encoded"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{label}: the URL's scheme must be redis://, rediss:// or unix://")


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=_userinfo(parts.netloc)[2]))


def read_secret_file(path: str, option: str = "password_file") -> str:
    """The secret in the file at ``path``: UTF-8 text, one trailing newline dropped (as
    ``echo`` and most editors write it).

    Raises:
        ValueError: the file is missing, unreadable, too large, not UTF-8 or empty; the message
            names ``option`` and the path, never the content.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ValueError(
            f"{option} {path!r}: cannot read it ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(
            f"{option} {path!r}: more than {MAX_SECRET_BYTES} bytes, not a password file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{option} {path!r}: not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"{option} {path!r}: the file is empty")
    return text


class FileCredentials:
    """A redis-py credential provider that reads ``password_file`` for every new connection.

    A file that went missing or empty fails that connection with redis-py's
    ``AuthenticationError`` (the connection is then closed, as after a refused password), whose
    message names the file, not its content.
    """

    __slots__ = ("_path", "_username")

    def __init__(self, path: str, username: str | None = None) -> None:
        self._path = path
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        from redis.exceptions import AuthenticationError  # noqa: PLC0415 - the redis extra

        try:
            password = read_secret_file(self._path)
        except ValueError as exc:
            raise AuthenticationError(str(exc)) from None
        return (self._username, password) if self._username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"FileCredentials({self._path!r})"


class RedisConnection(BaseModel):
    """Where a Redis is and how to log in to it: the keys every Redis declaration shares.

    The cross-field rules are field validators, not a model validator: pydantic puts a failed
    validator's input in the text of its error, and a model validator's input is the whole
    mapping, URL and password included, whatever model it is nested in.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, hide_input_in_errors=True)

    url: str | None = Field(
        default=None,
        description="redis://host:port/db, rediss:// for TLS, unix:///path for a socket. "
        "A password in it works, but validate warns: use password_env or password_file.",
    )
    url_env: str | None = Field(
        default=None,
        validate_default=True,
        description="Environment variable holding the URL (keeps secrets out).",
    )
    password_env: str | None = Field(
        default=None,
        min_length=1,
        description="Environment variable holding the password, if not in the URL.",
    )
    password_file: str | None = Field(
        default=None,
        min_length=1,
        validate_default=True,
        description="File holding the password (a mounted secret; one trailing newline is "
        "dropped), read at start and by every new connection.",
    )

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: str | None) -> str | None:
        # Checked when the file is read, so that CI's offline validate refuses it too; a URL
        # from url_env is checked where the service resolves it.
        if url is not None:
            check_url(url, "url")
        return url

    @field_validator("url_env")
    @classmethod
    def _one_url(cls, url_env: str | None, info: ValidationInfo) -> str | None:
        if "url" not in info.data:
            return url_env  # url itself is invalid: reported on its own
        if (info.data["url"] is None) == (url_env is None):
            raise ValueError("give exactly one of url and url_env; url_env keeps secrets out")
        return url_env

    @field_validator("password_file")
    @classmethod
    def _one_password(cls, password_file: str | None, info: ValidationInfo) -> str | None:
        password_env = info.data.get("password_env")
        if password_env is not None and password_file is not None:
            raise ValueError("give at most one of password_env and password_file")
        url = info.data.get("url")
        if (password_env or password_file) and isinstance(url, str) and url_has_password(url):
            raise ValueError(
                "the url holds a password and password_env or password_file names another; "
                "take the password out of the url"
            )
        return password_file

    #: the key :meth:`advice` is about, for the line ``resilience validate`` names
    ADVICE_AT: ClassVar[str] = "url"

    #: Keys left out of the dump while unset: a config version hashes the dump, and a
    #: declaration that does not use a key added later keeps the version it had.
    _OMITTED_WHEN_UNSET: ClassVar[frozenset[str]] = frozenset({"password_env", "password_file"})

    @field_serializer("url")
    def _masked(self, url: str | None) -> str | None:
        # What explain prints and config versions hash: a version must not depend on a secret.
        return None if url is None else redact_url(url)

    @model_serializer(mode="wrap")
    def _without_unset_logins(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = handler(self)
        if isinstance(dumped, dict):
            for key in self._OMITTED_WHEN_UNSET:
                if dumped.get(key, "") is None:
                    del dumped[key]
        return dumped

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" and isinstance(value, str) else value

    def advice(self) -> list[str]:
        """Valid but unwise: ``resilience validate`` prints each as a warning."""
        if self.url is not None and url_has_password(self.url):
            return [
                "url holds a password, so the secret is in the policy file and in every copy, "
                "review and history of it; take it out and give password_env or "
                "password_file, or move the whole URL to url_env"
            ]
        return []

    def resolved_url(self) -> str:
        """The URL, from the policy or the environment, checked.

        Raises:
            ValueError: ``url_env`` names an unset variable, or the URL is not a Redis URL.
        """
        if self.url is not None:
            url, label = self.url, "url"
        else:
            assert self.url_env is not None
            url = os.environ.get(self.url_env, "")
            if not url:
                raise ValueError(f"environment variable {self.url_env} (url_env) is not set")
            label = f"the URL in {self.url_env} (url_env)"
        check_url(url, label)
        return url

    def client_settings(self) -> tuple[str, dict[str, Any]]:
        """The URL to hand redis-py and the keyword arguments that carry the password, read
        now (``password_file`` is read again by every new connection).

        Raises:
            ValueError: a variable is unset, the file cannot be used, the URL is not a Redis
                URL, or the password is given twice. The message names the option, never a
                value.
        """
        url = self.resolved_url()
        if self.password_env is None and self.password_file is None:
            return url, {}
        if url_has_password(url):
            raise ValueError(
                f"the URL in {self.url_env} (url_env) holds a password and "
                f"{'password_env' if self.password_env else 'password_file'} names another; "
                "keep one"
            )
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if not password:
                raise ValueError(
                    f"environment variable {self.password_env} (password_env) is not set"
                )
            return url, {"password": password}
        assert self.password_file is not None
        read_secret_file(self.password_file)  # fail at build, not on the first request
        user = _userinfo(urlsplit(url).netloc)[0]
        # redis-py refuses a username beside a credential provider: the provider sends both.
        credentials = FileCredentials(self.password_file, unquote(user) or None)
        return _without_userinfo(url), {"credential_provider": credentials}
