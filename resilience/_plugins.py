"""Plugin discovery: built-ins and entry points, through one pluggy manager, at load time only.

The host loads the built-in plugins (the ``resilience_plugins`` package), then the third-party
ones from the ``resilience.plugins`` entry-point group that the allowlist admits, and asks every
plugin for its step types through :func:`~resilience.hookspecs.resilience_step_types`. The result
is a plain registry (name -> class) that validation and compilation read; pluggy is not called
again after that.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from ._errors import PluginError
from ._steps import Guard, PostStep, Step, StepKind, StepParams, Tier, TierParams
from .events import PLUGIN_LOADED, EventSink, NullSink

__all__ = ["ENTRY_POINT_GROUP", "PluginHost", "StepType"]

#: The entry-point group third-party plugins register under.
ENTRY_POINT_GROUP = "resilience.plugins"
#: The module holding the built-in plugins.
BUILTIN_MODULE = "resilience_plugins"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

StepType = type[Step]


#: Keys of a step declaration that belong to the engine, not to a step type's parameters.
RESERVED_KEYS = frozenset({"type", "id", "mode", "isolation"})


class PluginHost:
    """The loaded plugins and the step types they contribute.

    Args:
        allow: names of third-party entry points allowed to load; by default none. Built-ins
            always load. ``None`` admits every installed one: for tooling that lists what is
            installed, never for a running engine (installing a package must not be enough to
            run its code in a search service).
        extra: plugin objects (modules or instances) to register in code, e.g. in tests or by
            an application that ships its own steps without an entry point.
        entry_points_: the entry points to consider; defaults to those installed.
        events: where ``resilience.plugin.loaded`` goes.

    Raises:
        PluginError: a plugin failed to import, or two plugins registered the same step name.
    """

    def __init__(
        self,
        *,
        allow: Sequence[str] | None = (),
        extra: Iterable[object] = (),
        entry_points_: Iterable[EntryPoint] | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._events = events or NullSink()
        self._extra = tuple(extra)
        self._entry_points = None if entry_points_ is None else tuple(entry_points_)
        self.step_types: dict[str, StepType] = {}
        self._origin: dict[str, str] = {}

        builtin = _import(BUILTIN_MODULE, plugin="builtin")
        self._register("builtin", builtin)
        for plugin in self._extra:
            self._register(_plugin_name(plugin), plugin)
        found = (
            entry_points(group=ENTRY_POINT_GROUP)
            if self._entry_points is None
            else self._entry_points
        )
        #: Installed third-party plugins the allowlist leaves out, by entry-point name (never
        #: imported: a validation error names them when a step type is unknown).
        self.not_allowed: tuple[str, ...] = ()
        for ep in sorted(found, key=lambda e: e.name):
            if allow is not None and ep.name not in allow:
                self.not_allowed = (*self.not_allowed, ep.name)
                continue
            try:
                loaded = ep.load()
            except Exception as exc:
                raise PluginError(
                    ep.name,
                    f"failed to import {ep.value!r}: {type(exc).__name__}: {exc} "
                    f"(fix the plugin, uninstall it, or leave it out of settings.plugins.allow)",
                ) from exc
            added = self._register(ep.name, loaded)
            dist = ep.dist.name if ep.dist is not None else ""
            self._events.emit(PLUGIN_LOADED, plugin=ep.name, distribution=dist, step_types=added)
        self.manager.check_pending()

    def _register(self, name: str, plugin: object) -> list[str]:
        needs = getattr(plugin, "RESILIENCE_API", hookspecs.API_VERSION)
        if not isinstance(needs, int) or isinstance(needs, bool) or needs < 1:
            raise PluginError(name, f"RESILIENCE_API is {needs!r}; it must be a whole number >= 1")
        if needs > hookspecs.API_VERSION:
            raise PluginError(
                name,
                f"needs plugin API {needs}; this release of search-resilience has "
                f"{hookspecs.API_VERSION} (upgrade search-resilience, or pin an older plugin)",
            )
        if self.manager.is_registered(plugin) or self.manager.has_plugin(name):
            raise PluginError(name, "registered twice (two entry points with the same name?)")
        self.manager.register(plugin, name=name)
        added: list[str] = []
        for impl in self.manager.hook.resilience_step_types.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                contributed: Any = impl.function() or ()
            except Exception as exc:
                raise PluginError(
                    name, f"resilience_step_types raised {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(contributed, list | tuple):
                raise PluginError(
                    name, f"resilience_step_types returned {contributed!r}; return a list"
                )
            for step_type in contributed:
                self._add(name, step_type)
                added.append(step_type.name)
        return added

    def _add(self, plugin: str, step_type: Any) -> None:
        if not (inspect.isclass(step_type) and issubclass(step_type, Tier | Guard | PostStep)):
            raise PluginError(
                plugin,
                f"resilience_step_types returned {step_type!r}; "
                "expected subclasses of Tier, Guard or PostStep",
            )
        name = getattr(step_type, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise PluginError(
                plugin,
                f"step type {step_type.__qualname__} has name {name!r}; "
                "set a class attribute name in lowercase letters, digits and '_'",
            )
        params = getattr(step_type, "Params", None)
        needed = TierParams if issubclass(step_type, Tier) else StepParams
        if not (inspect.isclass(params) and issubclass(params, needed)):
            raise PluginError(
                plugin,
                f"step type {name!r} has Params {params!r}; it must subclass "
                f"resilience.{needed.__name__} (which rejects unknown keys"
                f"{' and declares the timeout' if needed is TierParams else ''})",
            )
        taken = sorted(RESERVED_KEYS & set(params.model_fields))
        if taken:
            raise PluginError(
                plugin,
                f"step type {name!r} declares the parameter(s) {', '.join(taken)}, which every "
                f"step has already (reserved: {', '.join(sorted(RESERVED_KEYS))}); rename them",
            )
        if name in self.step_types:
            other = self._origin[name]
            raise PluginError(
                plugin,
                f"step type {name!r} is already registered by plugin {other!r}; "
                "rename one of them or remove one plugin from settings.plugins.allow",
            )
        self.step_types[name] = step_type
        self._origin[name] = plugin

    def with_allow(self, allow: Sequence[str] | None) -> PluginHost:
        """A host like this one (the same plugins registered in code, the same entry points to
        consider) with another allowlist: a reloaded policy file that admits other plugins.

        Raises:
            PluginError: a plugin the new allowlist admits failed to load.
        """
        return PluginHost(
            allow=allow, extra=self._extra, entry_points_=self._entry_points, events=self._events
        )

    def origin(self, name: str) -> str:
        """The plugin that registered step type ``name``."""
        return self._origin[name]

    def names(self, kind: StepKind | None = None) -> list[str]:
        """Registered step type names, optionally only of one kind, sorted."""
        return sorted(n for n, t in self.step_types.items() if kind is None or t.kind is kind)


def _import(module: str, *, plugin: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise PluginError(plugin, f"failed to import {module!r}: {exc}") from exc


def _plugin_name(plugin: object) -> str:
    return str(getattr(plugin, "__name__", None) or type(plugin).__qualname__)
