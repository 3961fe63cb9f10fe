"""The plugin manager: built-in plugins plus every ``ecgkit`` entry point.

Built lazily on first use (importing ecgkit has no side effects). Tests and
embedders can build a manager restricted to the plugins they name with
:func:`make_plugin_manager`.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import pluggy

from . import hookspecs

#: Built-in plugin modules, registered through the same hooks as third parties.
BUILTIN_PLUGINS = (
    "ecgkit.preprocess",
    "ecgkit.segment",
    "ecgkit.explain",
    "ecgkit.models",
)


def make_plugin_manager(*, entry_points: bool = True, extra=()) -> pluggy.PluginManager:
    """Return a new plugin manager holding the built-ins, entry points and ``extra`` plugins."""
    pm = pluggy.PluginManager("ecgkit")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints("ecgkit")
        except Exception as exc:  # a broken third-party package must not become a traceback
            from .errors import RegistryError

            raise RegistryError(f"an installed ecgkit plugin failed to load: {type(exc).__name__}: {exc}") from None
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()  # a misspelt hook name in a plugin is an error, not silently ignored
    except pluggy.PluginValidationError as exc:
        from .errors import RegistryError

        raise RegistryError(f"plugin {exc.plugin_name!r} implements an unknown hook: {exc}") from None
    return pm


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built once, on first use)."""
    return make_plugin_manager()


def plugin_provider(pm: pluggy.PluginManager, plugin) -> str:
    """Name of the distribution that provided ``plugin`` (``ecgkit`` for built-ins)."""
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return dist.project_name
    name = pm.get_name(plugin) or ""
    if name.startswith("ecgkit."):
        return "ecgkit"
    return name or repr(plugin)
