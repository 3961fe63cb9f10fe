"""Registries and the plugin manager: listing, creating, duplicates, laziness."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest

import ecgkit
from ecgkit.errors import EcgkitError, RegistryError
from ecgkit.plugins import make_plugin_manager
from ecgkit.registry import KINDS, collect, create, get, list_components

BUILTINS = {
    "preprocessors": {"bandpass", "zscore", "resample"},
    "segmenters": {"pan-tompkins", "xqrs", "reference"},
}


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A plugin as a named module object whose functions are ecgkit hook implementations."""
    mod = types.ModuleType(name)
    for hook, result in hooks.items():
        setattr(mod, hook, ecgkit.hookimpl(lambda result=result: result))
    return mod


def dummy_segmenter():
    """A dummy segmenter used by the tests."""
    return lambda signal, fs: []


@pytest.fixture
def builtin_pm():
    return make_plugin_manager(entry_points=False)


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_builtins_are_listed_by_kind_with_provider_ecgkit(kind, builtin_pm):
    comps = collect(kind, builtin_pm)
    assert set(comps) == BUILTINS[kind]
    assert list(comps) == sorted(comps)  # stable, sorted output
    for name, comp in comps.items():
        assert comp.kind == kind and comp.name == name
        assert comp.plugin == "ecgkit"
        assert comp.description, f"{name} has no description"
        assert callable(comp.factory)


@pytest.mark.parametrize("kind", sorted(BUILTINS))
def test_global_registry_contains_the_builtins(kind):
    # the process-wide manager may also hold installed plugins (CI installs ecgkit-transnet)
    comps = collect(kind)
    assert BUILTINS[kind] <= set(comps)
    assert all(comps[n].plugin == "ecgkit" for n in BUILTINS[kind])
    assert set(ecgkit.list_components(kind)) == set(comps)


def test_list_components_filters_with_a_shell_pattern(builtin_pm):
    assert list_components("segmenters", "p*", pm=builtin_pm) == ["pan-tompkins"]
    assert list_components("preprocessors", "*s*", pm=builtin_pm) == ["bandpass", "resample", "zscore"]
    assert list_components("segmenters", "nothing-*", pm=builtin_pm) == []


def test_unknown_kind_is_a_registry_error(builtin_pm):
    with pytest.raises(RegistryError, match="unknown component kind 'widgets'") as exc:
        collect("widgets", builtin_pm)
    for kind in KINDS:
        assert kind in str(exc.value)


def test_create_unknown_name_lists_registered_names(builtin_pm):
    with pytest.raises(RegistryError) as exc:
        create("segmenters", "no-such-detector", pm=builtin_pm)
    msg = str(exc.value)
    assert "no-such-detector" in msg
    for name in BUILTINS["segmenters"]:
        assert name in msg
    assert isinstance(exc.value, EcgkitError)


def test_create_builds_a_working_component(builtin_pm):
    import numpy as np

    step = create("preprocessors", "resample", pm=builtin_pm, fs_hz=180)
    y, fs = step(np.zeros(360), 360.0)
    assert fs == 180.0 and y.shape == (180,)


@pytest.mark.parametrize("kind, name, params", [
    ("segmenters", "reference", {"no_such_param": 1}),
    ("preprocessors", "bandpass", {"low": 1.0}),
    ("preprocessors", "zscore", {"eps": 1e-8, "extra": 2}),
])
def test_create_with_bad_params_is_a_registry_error(kind, name, params, builtin_pm):
    with pytest.raises(RegistryError, match="bad parameters") as exc:
        create(kind, name, pm=builtin_pm, **params)
    assert name in str(exc.value)
    assert next(iter(params)) in str(exc.value)


def test_extra_plugin_components_are_listed_with_their_provider():
    pm = make_plugin_manager(entry_points=False,
                             extra=[plugin_module("my_plugin", register_segmenters={"dummy": dummy_segmenter})])
    comp = get("segmenters", "dummy", pm=pm)
    assert comp.plugin == "my_plugin"
    assert comp.description == "A dummy segmenter used by the tests."
    assert set(list_components("segmenters", pm=pm)) == BUILTINS["segmenters"] | {"dummy"}
    # the manager is per call: the process-wide registry does not see it
    assert "dummy" not in list_components("segmenters")


def test_two_plugins_registering_the_same_segmenter_name_both_named():
    pm = make_plugin_manager(entry_points=False, extra=[
        plugin_module("plugin_alpha", register_segmenters={"twin": dummy_segmenter}),
        plugin_module("plugin_beta", register_segmenters={"twin": dummy_segmenter}),
    ])
    with pytest.raises(RegistryError) as exc:
        collect("segmenters", pm)
    msg = str(exc.value)
    assert "'twin'" in msg and "registered twice" in msg
    assert "plugin_alpha" in msg and "plugin_beta" in msg
    with pytest.raises(RegistryError):
        create("segmenters", "reference", pm=pm)  # any use of the kind reports the clash


def test_a_plugin_shadowing_a_builtin_name_is_refused():
    pm = make_plugin_manager(entry_points=False,
                             extra=[plugin_module("shadow_plugin", register_segmenters={"xqrs": dummy_segmenter})])
    with pytest.raises(RegistryError) as exc:
        collect("segmenters", pm)
    assert "'xqrs'" in str(exc.value)
    assert "'ecgkit'" in str(exc.value) and "shadow_plugin" in str(exc.value)
    # other kinds are unaffected
    assert set(collect("preprocessors", pm)) == BUILTINS["preprocessors"]


def test_a_hook_returning_a_non_dict_is_a_registry_error():
    pm = make_plugin_manager(entry_points=False,
                             extra=[plugin_module("bad_plugin", register_segmenters=["not", "a", "dict"])])
    with pytest.raises(RegistryError, match="bad_plugin.*must return a dict"):
        collect("segmenters", pm)


def test_importing_ecgkit_registers_nothing():
    code = textwrap.dedent("""
        import sys
        import ecgkit
        loaded = sorted(m for m in ("ecgkit.segment", "ecgkit.preprocess") if m in sys.modules)
        import ecgkit.cli  # building the command group does not load plugins either
        import ecgkit.plugins
        print(ecgkit.plugins.get_plugin_manager.cache_info().currsize, loaded, "ecgkit.segment" in sys.modules)
        ecgkit.list_components("segmenters")
        print(ecgkit.plugins.get_plugin_manager.cache_info().currsize, "ecgkit.segment" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    before, after = out.stdout.splitlines()
    assert before == "0 [] False", f"import ecgkit had side effects: {before}"
    assert after == "1 True"
