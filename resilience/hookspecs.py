"""The hooks a plugin implements, each with when it is called, its arguments and its return.

A plugin is a module or object with functions marked ``@resilience.hookimpl``. Built-in step
types are contributed by the ``resilience_plugins`` package through exactly these hooks; third
parties register through the entry-point group ``resilience.plugins``::

    [project.entry-points."resilience.plugins"]
    acme = "acme_resilience.plugin"

Hooks run at load time only, when plugins are discovered and a policy is compiled. The
per-request path never calls a hook: what the hooks return is compiled into plain calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from ._steps import Step

__all__ = ["API_VERSION", "PROJECT", "hookimpl", "hookspec", "resilience_step_types"]

#: The pluggy project name; hook names carry the ``resilience_`` prefix.
PROJECT = "resilience"

#: The version of the plugin API: these hooks and the step contract of :mod:`resilience._steps`
#: (the classes, their methods, ``BuildContext``). It grows by one when a change could break a
#: plugin written for the previous one; additions (a new optional hook, a new optional method
#: with a default) keep it. A plugin that needs a newer API says so with a module or object
#: attribute ``RESILIENCE_API = N``, and an older engine refuses it by name instead of failing
#: at some later call. See docs/compatibility.md.
API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's implementation of a hook: ``@resilience.hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- discovery phase ---------------------------------------------------------------------------


@hookspec
def resilience_step_types() -> Sequence[type[Step]]:  # type: ignore[empty-body]
    """Contribute step types: tiers, guards and post steps.

    Called once per plugin host, when plugins are loaded (before any policy is validated), and
    on every plugin, built-in and third-party alike. Each plugin's answer is collected on its own,
    so that a clash can name the plugins involved.

    :return: the step classes this plugin provides: subclasses of :class:`resilience.Tier`,
        :class:`resilience.Guard` or :class:`resilience.PostStep`, each with a unique ``name``
        and a ``Params`` model. An empty sequence (or ``None``) contributes nothing.

    A step ``name`` that another plugin already registered is a :class:`resilience.PluginError`
    naming both plugins. So is an entry that is not such a class.

    May be implemented in: built-in plugins, and plugins registered through the
    ``resilience.plugins`` entry-point group.
    """
