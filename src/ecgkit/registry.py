"""Name -> factory registries, filled through the plugin hooks (timm style).

``list_components(kind, pattern)`` and ``create(kind, name, **params)`` are the only
way in; nothing else in ecgkit imports a plugin directly.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

from .errors import EcgkitError, RegistryError, first_line
from .plugins import get_plugin_manager, plugin_provider

#: kind -> hook name
KINDS = {
    "preprocessors": "register_preprocessors",
    "segmenters": "register_segmenters",
    "encoders": "register_encoders",
    "explainers": "register_explainers",
    "models": "register_models",
}


@dataclass(frozen=True)
class Component:
    """One registered component: its name, factory, description and provider."""

    kind: str
    name: str
    factory: Any
    plugin: str
    description: str


def _describe(factory) -> str:
    doc = inspect.getdoc(factory) if callable(factory) else None
    if not doc:
        return str(factory) if not callable(factory) else ""
    return doc.strip().splitlines()[0]


def collect(kind: str, pm: pluggy.PluginManager | None = None) -> dict[str, Component]:
    """All components of ``kind`` from every plugin, checking for duplicate names."""
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
    pm = pm or get_plugin_manager()
    hook = getattr(pm.hook, KINDS[kind])
    out: dict[str, Component] = {}
    # hook implementations are called in reverse registration order; sort for stable output
    for impl in hook.get_hookimpls():
        result = impl.function()
        if not result:
            continue
        if not isinstance(result, dict):
            raise RegistryError(f"plugin {impl.plugin_name!r}: {KINDS[kind]}() must return a dict")
        provider = plugin_provider(pm, impl.plugin)
        for name, factory in result.items():
            if name in out:
                raise RegistryError(
                    f"{kind[:-1]} {name!r} is registered twice: by {out[name].plugin!r} "
                    f"and by {provider!r}; uninstall one of them"
                )
            out[name] = Component(kind, name, factory, provider, _describe(factory))
    return dict(sorted(out.items()))


def list_components(kind: str, pattern: str = "*", pm=None) -> list[str]:
    """Registered names of ``kind`` matching the shell-style ``pattern``."""
    return [n for n in collect(kind, pm) if fnmatch.fnmatch(n, pattern)]


def get(kind: str, name: str, pm=None) -> Component:
    """The component ``name`` of ``kind``; a clear error lists the known names."""
    comps = collect(kind, pm)
    if name not in comps:
        known = ", ".join(comps) or "none"
        raise RegistryError(f"unknown {kind[:-1]} {name!r}; registered: {known}")
    return comps[name]


def create(kind: str, name: str, pm=None, **params) -> Callable:
    """Build the component ``name`` of ``kind`` with ``params``."""
    comp = get(kind, name, pm)
    try:
        inspect.signature(comp.factory).bind(**params)
    except TypeError as exc:
        raise RegistryError(f"{kind[:-1]} {name!r}: bad parameters {params}: {exc}") from None
    except ValueError:  # no signature available (builtins): let the call decide
        pass
    try:
        return comp.factory(**params)
    except EcgkitError:
        raise
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{kind[:-1]} {name!r}: bad parameters {params}: {first_line(exc, 200)}") from None
