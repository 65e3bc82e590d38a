"""An ASGI search service that embeds the resilience engine (Starlette, served by uvicorn).

Routes:

- ``GET /search?q=...&user=...&session=...&segment=...&n=10``: search the in-memory catalog,
  personalize the results with ``await engine.adecide(...)``, answer JSON and a
  ``Server-Timing`` header with the decision's own time;
- ``POST /click`` ``{"request_id", "item_id"}``: report a click on a list this process served
  (``engine.record_click``); always 202, ``counted`` says whether it counted;
- ``GET /metrics``: Prometheus text, the engine's series (``resilience.metrics``);
- ``GET /admin/flags``, ``POST /admin/flags`` ``{"key", "value", "reason", "by"}``: list and
  set (``value: null`` clears) the engine's flags; ``Authorization: Bearer <token>`` required
  (401 without it, 403 with a wrong one, 404 for every call while no token is configured).

Configuration, from the environment (``*_FILE``: read the value from that file instead, as a
mounted secret):

- ``SEARCH_REDIS_URL``: ``redis://host:port/db`` of the session store and the flags, no password;
- ``SEARCH_REDIS_PASSWORD`` or ``SEARCH_REDIS_PASSWORD_FILE``;
- ``SEARCH_ADMIN_TOKEN`` or ``SEARCH_ADMIN_TOKEN_FILE``: at least 16 characters; neither: the
  admin routes are off;
- ``SEARCH_POLICIES``: the policy file (default: ``policies.yaml`` beside this module).

Run it: ``uvicorn examples.search_service.app:create_app --factory`` from the repository root
(see ``docs/example-service.md``).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from cachetools import TTLCache
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from resilience import Engine, FlagError, RequestContext, Trace, metrics, user_hash

from .catalog import MAX_RESULTS, Catalog, profiles, segments

log = logging.getLogger("search_service")

DEFAULT_POLICIES = Path(__file__).with_name("policies.yaml")
MIN_TOKEN_LENGTH = 16
# The variables the policy file names (url_env, password_env); the app fills them at start.
ENGINE_REDIS_URL = "SEARCH_REDIS_URL"
ENGINE_REDIS_PASSWORD = "SEARCH_REDIS_PASSWORD"
# Query parameters that carry ids of people: hashed in the access log.
ID_PARAMETERS = frozenset({"user", "session"})


class ConfigError(ValueError):
    """The service is misconfigured. The message names variables, never their values."""


class Secret:
    """A secret string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_digest", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._digest = hashlib.sha256(value.encode()).digest()

    def reveal(self) -> str:
        """The value, for the one place that needs it."""
        return self._value

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is the secret, in time that does not depend on where they
        differ (``hmac.compare_digest``), so that response times leak nothing. Digests are
        compared, not the strings: ``compare_digest`` returns at once on a length mismatch,
        which would tell the secret's length."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(digest, self._digest)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def read_secret(environ: Mapping[str, str], name: str) -> Secret:
    """The secret in variable ``name``, or in the file that ``name_FILE`` points to (one
    trailing newline dropped).

    Raises:
        ConfigError: neither or both are set, the file cannot be read, or it is empty.
    """
    secret = optional_secret(environ, name)
    if secret is None:
        raise ConfigError(f"set {name} or {name}_FILE")
    return secret


def optional_secret(environ: Mapping[str, str], name: str) -> Secret | None:
    """As :func:`read_secret`, but ``None`` when neither variable is set.

    Raises:
        ConfigError: both are set, the file cannot be read, or the value is empty (set, but
            to nothing: a mistake, not a choice).
    """
    direct, path = environ.get(name), environ.get(f"{name}_FILE")
    if direct is None and path is None:
        return None
    if direct is not None and path is not None:
        raise ConfigError(f"set one of {name} and {name}_FILE, not both")
    if path is not None:
        try:
            direct = Path(path).read_text().removesuffix("\n").removesuffix("\r")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{name}_FILE: cannot read it ({why})") from None
    if not direct:
        raise ConfigError(f"{name}{'_FILE' if path is not None else ''} is empty")
    return Secret(direct)


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Its repr shows no secret. Without an admin token the
    admin routes are off: they refuse every call."""

    redis_url: str
    redis_password: Secret
    admin_token: Secret | None
    policies: Path = DEFAULT_POLICIES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the configuration from ``environ`` (``os.environ`` if ``None``).

        Raises:
            ConfigError: a variable is missing or wrong.
        """
        env = os.environ if environ is None else environ
        url = env.get("SEARCH_REDIS_URL", "")
        parts = urlsplit(url)
        if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
            raise ConfigError("set SEARCH_REDIS_URL to redis://host:port/db (or rediss://)")
        if parts.password is not None or parts.query:
            raise ConfigError(
                "SEARCH_REDIS_URL must hold no password and no query: put the password in "
                "SEARCH_REDIS_PASSWORD or SEARCH_REDIS_PASSWORD_FILE"
            )
        token = optional_secret(env, "SEARCH_ADMIN_TOKEN")
        if token is not None and len(token.reveal()) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"SEARCH_ADMIN_TOKEN: use at least {MIN_TOKEN_LENGTH} characters")
        return cls(
            redis_url=url,
            redis_password=read_secret(env, "SEARCH_REDIS_PASSWORD"),
            admin_token=token,
            policies=Path(env.get("SEARCH_POLICIES", DEFAULT_POLICIES)),
        )

    def engine_environment(self) -> dict[str, str]:
        """The variables the policy file names (``url_env``, ``password_env``), for the session
        store and the flags alike: the policy holds names, the environment the values."""
        return {
            ENGINE_REDIS_URL: self.redis_url,
            ENGINE_REDIS_PASSWORD: self.redis_password.reveal(),
        }


@dataclass
class Service:
    """What the routes share: the engine, the catalog, the metrics registry, and the traces of
    recent decisions that a click can count for (``/click``), bounded in number and age."""

    engine: Engine
    catalog: Catalog
    registry: CollectorRegistry
    recent: TTLCache[str, tuple[Trace, str | None]] = field(
        default_factory=lambda: TTLCache(maxsize=10_000, ttl=300)
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def search(request: Request) -> Response:
    """Search the catalog and personalize the results."""
    service = _service(request)
    params = request.query_params
    try:
        limit = min(max(int(params.get("n", "10")), 1), MAX_RESULTS)
    except ValueError:
        return _error(400, "n must be an integer")
    request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
    query = params.get("q", "")[:200]
    user = params.get("user") or None
    decision = await service.engine.adecide(
        RequestContext(
            user_id=user,
            session_id=params.get("session") or None,
            segment=params.get("segment") or None,
            request_id=request_id,
            query=query,
            candidates=service.catalog.search(query),
        )
    )
    trace = decision.trace
    if trace.sampled or service.engine.exposures is not None:
        # Only these can count a click (engine.record_click); keeping every trace would grow
        # the heap, and with it the pauses of Python's garbage collector.
        service.recent[request_id] = (trace, user)
    return JSONResponse(
        {
            "request_id": request_id,
            "personalized": decision.personalized,
            "served": trace.served,
            "reason": trace.reason.value,
            "decision_us": trace.used_us,
            "items": [
                {"item_id": c.item_id, "category": c.category, "score": c.score}
                for c in decision.candidates[:limit]
            ],
        },
        headers={"Server-Timing": f"decide;dur={trace.used_us / 1000:.3f}"},
    )


async def click(request: Request) -> Response:
    """Report a click on an item of a list this process served: 202 whether or not it counted
    (a click beacon never fails the page); ``counted`` says whether the engine took it."""
    service = _service(request)
    body = await _json(request)
    if body is None:
        return _error(400, "expected a JSON object")
    request_id, item_id = body.get("request_id"), body.get("item_id")
    if not isinstance(request_id, str) or not isinstance(item_id, str):
        return _error(400, "request_id and item_id (strings) are required")
    found = service.recent.get(request_id)
    if found is not None:
        trace, user = found
        service.engine.record_click(trace, user_id=user, item_id=item_id)
    return JSONResponse({"counted": found is not None}, status_code=202)


def _authorized(request: Request) -> Response | None:
    """``None`` if the request carries the admin token; else the response refusing it: 404
    while no token is configured (the routes are off, whatever is presented), 401 without
    credentials, 403 with wrong ones. The presented token is never logged."""
    token: Secret | None = request.app.state.admin_token
    if token is None:
        return _error(404, "the admin routes are off: no admin token is configured")
    header = request.headers.get("authorization")
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return _error(401, "admin token required", **{"WWW-Authenticate": 'Bearer realm="admin"'})
    if not token.matches(presented.strip()):
        client = request.client.host if request.client else "?"
        log.warning("admin: refused a wrong token from %s on %s", client, request.url.path)
        return _error(403, "wrong admin token")
    return None


async def admin_flags(request: Request) -> Response:
    """GET: every flag and every flag source. POST: set (or, with ``value: null``, clear)
    one flag in this process, with a reason."""
    refused = _authorized(request)
    if refused is not None:
        return refused
    flags = _service(request).engine.flags
    if request.method == "GET":
        return JSONResponse(
            {
                "flags": [state._asdict() for state in flags.states()],
                "sources": [health._asdict() for health in flags.sources()],
            }
        )
    body = await _json(request)
    if body is None:
        return _error(400, "expected a JSON object")
    key, value, reason = body.get("key"), body.get("value"), body.get("reason")
    by = body.get("by") or "admin-api"
    if not isinstance(key, str) or not isinstance(reason, str) or not reason.strip():
        return _error(400, "key and a non-empty reason are required")
    if not isinstance(by, str) or not (value is None or isinstance(value, str | bool)):
        return _error(400, "value must be on, off, shadow or null (clear); by a string")
    try:
        if value is None:
            state = flags.clear(key, reason=reason, by=by)
        else:
            state = flags.set(key, value, reason=reason, by=by)
    except FlagError as exc:
        return _error(400, str(exc))
    log.info("admin: flag %s is %s (by %s: %s)", key, state.value, by, reason)
    return JSONResponse({"flag": state._asdict()})


async def _json(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class HashedIds(logging.Filter):
    """Replaces the user and session ids in uvicorn's access log lines (the query of
    ``/search``) with salted hashes (:func:`resilience.user_hash`).

    The salt is drawn per process and kept nowhere: the lines of one process can still be
    told apart by user, but no id can be recovered from them or joined across processes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._salt = secrets.token_hex(16)

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], self.scrub(args[2]), *args[3:])
        return True

    def scrub(self, target: str) -> str:
        """``target`` (a path and query) with the id parameters' values hashed."""
        path, question, query = target.partition("?")
        if not question:
            return target
        pairs = parse_qsl(query, keep_blank_values=True)
        if not any(key in ID_PARAMETERS for key, _ in pairs):
            return target
        hashed = [
            (key, user_hash(self._salt, value) if key in ID_PARAMETERS and value else value)
            for key, value in pairs
        ]
        return f"{path}?{urlencode(hashed)}"


def hash_ids_in_access_log() -> None:
    """Install :class:`HashedIds` on uvicorn's access logger, once per process."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HashedIds) for f in access.filters):
        access.addFilter(HashedIds())


class MetricsEndpoint:
    """``resilience.metrics.asgi_app`` as a route: Starlette treats a plain function as a
    request handler, so the ASGI app is wrapped in an object."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app (uvicorn's ``--factory`` calls it with no argument: the environment).

    Raises:
        ConfigError: the configuration is incomplete (only when ``settings`` is ``None``).
    """
    if settings is None:  # run by a server: log our lines beside its own
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    config = Settings.from_env() if settings is None else settings
    hash_ids_in_access_log()
    registry = CollectorRegistry()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The engine reads the Redis URL and password from the variables its policy names.
        os.environ.update(config.engine_environment())
        # Built off the event loop: it validates the file and reads the flags from Redis once.
        engine = await asyncio.to_thread(
            Engine.from_file,
            config.policies,
            {"profile_store": profiles(), "segment_store": segments()},
        )
        metrics.register(engine, registry)
        app.state.service = Service(engine, Catalog(), registry)
        # What start-up built lives as long as the process: move it out of the garbage
        # collector's reach, so that a full collection, which stops the event loop and every
        # decision in flight, scans only what requests allocate (docs/example-service.md).
        gc.collect()
        gc.freeze()
        log.info(
            "search service ready: policies %s (%s), Redis at %s",
            config.policies.name,
            engine.config_version(),
            urlsplit(config.redis_url).netloc.rpartition("@")[2],  # never a password
        )
        if config.admin_token is None:
            log.warning(
                "admin routes are off: set SEARCH_ADMIN_TOKEN or SEARCH_ADMIN_TOKEN_FILE "
                "to turn them on"
            )
        try:
            yield
        finally:
            metrics.unregister(engine, registry)
            await engine.aclose()  # closes the engine's Redis connections and flag sources

    app = Starlette(
        routes=[
            Route("/search", search, methods=["GET"]),
            Route("/click", click, methods=["POST"]),
            Route("/metrics", MetricsEndpoint(metrics.asgi_app(registry)), methods=["GET"]),
            Route("/admin/flags", admin_flags, methods=["GET", "POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.admin_token = config.admin_token
    return app
