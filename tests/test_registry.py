"""The generic registry and the project's catalog."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cogrpo.registry import Registry, UnknownEntryError


def test_unknown_name_suggests_close_match():
    registry = Registry("reward")
    registry.register("imagereward", "json:dumps")
    registry.register("hps", "json:loads")
    with pytest.raises(UnknownEntryError, match="Did you mean 'imagereward'"):
        registry.entry("imagereword")


def test_unknown_name_lists_available_names():
    registry = Registry("reward")
    registry.register("hps", "json:loads")
    with pytest.raises(UnknownEntryError, match="Available: hps"):
        registry.entry("zzz")


def test_alias_resolves_to_entry():
    registry = Registry("model")
    registry.register("a", "json:dumps", aliases=("b",))
    assert registry.get("b") is registry.get("a")


def test_duplicate_registration_fails():
    registry = Registry("model")
    registry.register("a", "json:dumps")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", "json:loads")


def test_target_must_name_module_and_attribute():
    with pytest.raises(ValueError, match="module:attribute"):
        Registry("model").register("a", "json.dumps")


def test_missing_attribute_reports_target():
    registry = Registry("model")
    registry.register("broken", "json:does_not_exist")
    with pytest.raises(ImportError, match="json:does_not_exist"):
        registry.get("broken")


def test_catalog_imports_no_heavy_dependency():
    code = "import sys, cogrpo.catalog; print(any(m in sys.modules for m in ('open_clip', 'torch', 'diffusers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_catalog_entries_resolve():
    from cogrpo.catalog import BENCHMARKS, MODELS, REWARDS

    for registry in (MODELS, REWARDS, BENCHMARKS):
        for entry in registry:
            assert callable(entry.load()), entry.name
