"""Declarative degradation policies for real-time search personalization.

A platform team declares in ``policies.yaml`` how personalization degrades when its inputs fail;
a search service embeds an :class:`Engine` that runs that declaration on every request, under a
hard latency budget, and always answers. See ``docs/architecture.md``.
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _distribution_version

from ._breaker import BreakerOptions, BreakerSnapshot, CircuitBreaker
from ._bulkhead import Bulkhead, BulkheadStats
from ._clock import Clock, SystemClock
from ._diversity import (
    DiversityMonitor,
    DiversitySnapshot,
    MonitoringSettings,
    category_coverage,
    category_entropy,
)
from ._durations import Duration, format_duration, parse_duration
from ._engine import Engine, ReloadResult
from ._errors import (
    BreakerOpen,
    BulkheadFull,
    GarbageData,
    PluginError,
    PolicyError,
    PolicyIssue,
    PolicyValidationError,
    ResilienceError,
    SourceBindingError,
)
from ._exposure import user_hash
from ._flag_feed import FeedSnapshot, FlagFeed, FlagRecord
from ._flag_settings import FlagSettings
from ._flags import PRECEDENCE, EnvFlagFeed, FlagError, Flags, FlagSpec, FlagState, SourceHealth
from ._fork import follow_forks, forget_forks, hold_across_forks
from ._holdout import HoldoutOptions, in_holdout
from ._holdout import bucket as holdout_bucket
from ._model import (
    Affinities,
    Candidate,
    Click,
    RequestContext,
    SessionState,
    Signals,
    normalize_weights,
)
from ._outcomes import FAILURE_OUTCOMES, Outcome
from ._plugins import ENTRY_POINT_GROUP, PluginHost
from ._policy import (
    FORMAT_VERSION,
    EventSettings,
    Mode,
    PluginSettings,
    Policy,
    PolicySet,
    Settings,
    StepSpec,
    load_policies,
    load_policies_file,
)
from ._readings import (
    BREAKER_STATES,
    METRICS,
    MetricSpec,
    Reading,
    breaker_readings,
    register_metric,
)
from ._redis import RedisOptions, RedisSessionStore, SessionFormat, decode_session
from ._retry import RetryOptions
from ._secrets import RedisConnection
from ._sources import BoundSource, MemorySource, SourceFunction, SourceOptions, Store
from ._stats import DEFAULT_DURATION_BUCKETS, DecisionTotals, MetricsSettings
from ._steps import (
    IN_SHADOW,
    BuildContext,
    Guard,
    PostStep,
    SourceName,
    Step,
    StepKind,
    StepParams,
    Tier,
    TierParams,
)
from ._trace import Decision, Reason, StepRecord, Trace
from .events import EVENTS, EventSink, EventSpec, NullSink, StructlogSink, register_event
from .hookspecs import hookimpl

try:
    #: The release, read from the installed distribution: pyproject.toml holds the one copy.
    __version__ = _distribution_version("search-resilience")
except _NotInstalled:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "BREAKER_STATES",
    "DEFAULT_DURATION_BUCKETS",
    "ENTRY_POINT_GROUP",
    "EVENTS",
    "FAILURE_OUTCOMES",
    "FORMAT_VERSION",
    "IN_SHADOW",
    "METRICS",
    "PRECEDENCE",
    "Affinities",
    "BoundSource",
    "BreakerOpen",
    "BreakerOptions",
    "BreakerSnapshot",
    "BuildContext",
    "Bulkhead",
    "BulkheadFull",
    "BulkheadStats",
    "Candidate",
    "CircuitBreaker",
    "Click",
    "Clock",
    "Decision",
    "DecisionTotals",
    "DiversityMonitor",
    "DiversitySnapshot",
    "Duration",
    "Engine",
    "EnvFlagFeed",
    "EventSettings",
    "EventSink",
    "EventSpec",
    "FeedSnapshot",
    "FlagError",
    "FlagFeed",
    "FlagRecord",
    "FlagSettings",
    "FlagSpec",
    "FlagState",
    "Flags",
    "GarbageData",
    "Guard",
    "HoldoutOptions",
    "MemorySource",
    "MetricSpec",
    "MetricsSettings",
    "Mode",
    "MonitoringSettings",
    "NullSink",
    "Outcome",
    "PluginError",
    "PluginHost",
    "PluginSettings",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicySet",
    "PolicyValidationError",
    "PostStep",
    "Reading",
    "Reason",
    "RedisConnection",
    "RedisOptions",
    "RedisSessionStore",
    "ReloadResult",
    "RequestContext",
    "ResilienceError",
    "RetryOptions",
    "SessionFormat",
    "SessionState",
    "Settings",
    "Signals",
    "SourceBindingError",
    "SourceFunction",
    "SourceHealth",
    "SourceName",
    "SourceOptions",
    "Step",
    "StepKind",
    "StepParams",
    "StepRecord",
    "StepSpec",
    "Store",
    "StructlogSink",
    "SystemClock",
    "Tier",
    "TierParams",
    "Trace",
    "breaker_readings",
    "category_coverage",
    "category_entropy",
    "decode_session",
    "follow_forks",
    "forget_forks",
    "format_duration",
    "hold_across_forks",
    "holdout_bucket",
    "hookimpl",
    "in_holdout",
    "load_policies",
    "load_policies_file",
    "normalize_weights",
    "parse_duration",
    "register_event",
    "register_metric",
    "user_hash",
]
