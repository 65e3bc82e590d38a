"""Prometheus metrics for engines, read at scrape time.

The request path only adds to plain integers (:meth:`Engine.stats`); everything else is state
that already exists (:meth:`Engine.readings`). A collector turns both into metric families when
Prometheus scrapes, so metrics cost the request path a few hundred nanoseconds whatever the
number of series, and nothing at all between scrapes.

Usage::

    from resilience import metrics

    metrics.register(engine)                     # into prometheus-client's default registry
    server = metrics.serve(9464)                 # or metrics.wsgi_app() / metrics.asgi_app()
    ...
    server.close()

Every name is listed in :data:`METRICS` (docs/observability.md is generated from it).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._readings import METRICS, MetricSpec, Reading, register_metric
from ._stats import bound_label
from .events import ENGINE_INTERNAL_ERROR

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = [
    "METRICS",
    "EngineCollector",
    "MetricSpec",
    "MetricsServer",
    "asgi_app",
    "register",
    "register_metric",
    "serve",
    "unregister",
    "wsgi_app",
]


_DECISIONS = "resilience_decisions"
_STEPS = "resilience_step_outcomes"
_DURATION = "resilience_decision_duration_seconds"


class EngineCollector(Collector):
    """Collects the metrics of one or more engines (each with its constant labels).

    Several engines in one process export through one collector so that each metric family
    appears once; give each engine a distinguishing label (``engine="search"``). A closed or
    garbage-collected engine drops out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: list[tuple[weakref.ref[Engine], dict[str, str]]] = []

    def add(self, engine: Engine, labels: Mapping[str, str] | None = None) -> None:
        """Collect ``engine`` from now on, with ``labels`` on every one of its series
        (registering an engine again replaces its labels).

        Raises:
            ValueError: the labels would make series of two engines collide, or the label
                names differ from those of the engines already collected (Prometheus needs
                one set of label names per metric).
        """
        wanted = dict(labels or {})
        with self._lock:
            others = [(ref, known) for ref, known in self._engines if ref() not in (None, engine)]
            for _, known in others:
                if set(known) != set(wanted):
                    raise ValueError(
                        f"engines collected together need the same label names: {sorted(known)}"
                        f" already, {sorted(wanted)} now; e.g. labels={{'engine': 'search'}}"
                    )
                if known == wanted:
                    raise ValueError(
                        f"another engine is collected with the labels {wanted or '(none)'}: "
                        "give each engine its own, e.g. labels={'engine': 'search'}"
                    )
            self._engines = [*others, (weakref.ref(engine), wanted)]

    def remove(self, engine: Engine) -> bool:
        """Stop collecting ``engine``; returns whether it was collected."""
        with self._lock:
            before = len(self._engines)
            self._engines = [(ref, lab) for ref, lab in self._engines if ref() is not engine]
            return len(self._engines) != before

    def __len__(self) -> int:
        return len(self._live())

    def _live(self) -> list[tuple[Engine, dict[str, str]]]:
        with self._lock:
            alive = [(ref(), labels) for ref, labels in self._engines]
            self._engines = [
                entry for entry, (engine, _) in zip(self._engines, alive, strict=True) if engine
            ]
        return [(engine, labels) for engine, labels in alive if engine is not None]

    def describe(self) -> Iterable[Metric]:
        return ()  # families depend on the engines' state: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        families: _Families = {}
        for engine, const in self._live():
            if engine._closed:
                continue
            try:
                readings = engine.readings()
                _collect_stats(engine, const, families)
            except Exception as exc:  # one engine's bug must not cost the others' metrics
                engine._emit(
                    ENGINE_INTERNAL_ERROR,
                    policy="",
                    error=f"metrics collection failed: {type(exc).__name__}: {exc}",
                )
                continue
            _collect_readings(readings, const, families)
        for family, _ in families.values():
            yield family


_Families = dict[str, tuple[Metric, tuple[str, ...]]]


def _family(families: _Families, name: str, kind: str, help: str, labels: Sequence[str]) -> Any:
    """The family ``name`` (made on first use), or ``None`` if it exists with other labels."""
    found = families.get(name)
    if found is None:
        maker: Callable[..., Metric]
        maker = {"counter": CounterMetricFamily, "histogram": HistogramMetricFamily}.get(
            kind, GaugeMetricFamily
        )
        family = maker(name, help, labels=list(labels))
        families[name] = (family, tuple(labels))
        return family
    family, known = found
    return family if known == tuple(labels) else None


def _collect_stats(engine: Engine, const: Mapping[str, str], families: _Families) -> None:
    totals = engine.stats()
    extra = tuple(const)
    values = tuple(const.values())
    spec = METRICS["resilience_decisions_total"]
    decisions = _family(families, _DECISIONS, "counter", spec.help, (*spec.labels, *extra))
    if decisions is not None:
        counted = dict(totals.decisions)
        counting = engine.policies.settings.metrics.enabled
        for policy in engine.versions() if counting else ():
            # There from the start, so that increase() sees the first one (alerts key on it).
            counted.setdefault((policy, "", "internal_error", False), 0)
        for (policy, tier, reason, shadow), count in sorted(counted.items()):
            mode = "shadow" if shadow else "on"
            decisions.add_metric([policy, tier or "none", str(reason), mode, *values], count)
    spec = METRICS["resilience_step_outcomes_total"]
    steps = _family(families, _STEPS, "counter", spec.help, (*spec.labels, *extra))
    if steps is not None:
        for (policy, step, outcome), count in sorted(totals.steps.items()):
            steps.add_metric([policy, step, str(outcome), *values], count)
    spec = METRICS[_DURATION]
    histogram = _family(families, _DURATION, "histogram", spec.help, (*spec.labels, *extra))
    if histogram is not None:
        bounds = [bound_label(b) for b in totals.bounds_us] + ["+Inf"]
        for policy, row in sorted(totals.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, row[:-1], strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            histogram.add_metric([policy, *values], buckets, row[-1] / 1e6)


def _collect_readings(
    readings: Iterable[Reading], const: Mapping[str, str], families: _Families
) -> None:
    for reading in readings:
        spec = METRICS.get(reading.name)
        if spec is None:
            continue  # not catalogued (register_metric): nothing to say what it means
        labels = {**reading.labels, **const}
        name = reading.name.removesuffix("_total") if spec.kind == "counter" else reading.name
        family = _family(families, name, spec.kind, spec.help, tuple(labels))
        if family is None:
            continue  # its labels disagree with its family's: not exportable
        value = float(reading.value)
        if spec.kind == "counter" and not math.isfinite(value):
            continue
        family.add_metric(list(labels.values()), value)


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, EngineCollector] = (
    weakref.WeakKeyDictionary()
)
_COLLECTORS_LOCK = threading.Lock()


def register(
    engine: Engine,
    registry: CollectorRegistry | None = None,
    *,
    labels: Mapping[str, str] | None = None,
) -> EngineCollector:
    """Export ``engine``'s metrics through ``registry`` (prometheus-client's default one if
    ``None``). Engines registered into the same registry share one collector; give each its
    own ``labels`` (``{"engine": "search"}``) when there are several.

    Returns:
        The registry's collector.
    """
    registry = REGISTRY if registry is None else registry
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
        if collector is None:
            collector = _COLLECTORS[registry] = EngineCollector()
            registry.register(collector)
    collector.add(engine, labels)
    return collector


def unregister(engine: Engine, registry: CollectorRegistry | None = None) -> bool:
    """Stop exporting ``engine`` through ``registry``; returns whether it was exported."""
    registry = REGISTRY if registry is None else registry
    with _COLLECTORS_LOCK:
        collector = _COLLECTORS.get(registry)
    return collector.remove(engine) if collector is not None else False


def wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app that serves ``registry`` (the default one if ``None``) in Prometheus' text
    format, e.g. mounted at ``/metrics``."""
    return make_wsgi_app(REGISTRY if registry is None else registry)


def asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app that serves ``registry`` (the default one if ``None``)."""
    return make_asgi_app(REGISTRY if registry is None else registry)


class MetricsServer:
    """A standalone HTTP server for metrics on a thread of its own; stop it with :meth:`close`."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The port it listens on (useful when it was started on port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` over HTTP on ``addr:port`` (``port`` 0: any free port) until
    :meth:`MetricsServer.close`. Listens on loopback unless told otherwise."""
    server, thread = _start_http_server(
        port, addr=addr, registry=REGISTRY if registry is None else registry
    )
    return MetricsServer(server, thread)
