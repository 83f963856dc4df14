"""docs/configuration.md is generated from Settings, and every documented variable is really read."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from settings import Settings, configuration_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
REGENERATE = ".venv/bin/python -m settings > docs/configuration.md"

# A value each variable accepts that differs from its default, where the generic probe would not do.
# Hosts stay on loopback, where the development admin token is allowed.
_PROBES = {"QUIZ_ENV": "staging", "REALTIME_ASYNC_MODE": "threading", "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
           "CORS_ORIGINS": "https://a.example,https://b.example", "API_HOST": "127.0.0.2",
           "REALTIME_HOST": "127.0.0.2", "API_WORKER_CLASS": "gthread"}  # fmt: skip


def _probe(env: str, default: Any) -> str:
    if env in _PROBES:
        return _PROBES[env]
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, int):
        return str(default + 1)
    if isinstance(default, float):
        return str(default + 0.5)
    return "probe-value-0123456789abcdef"


def test_doc_is_up_to_date() -> None:
    assert DOC.read_text() == configuration_doc(), f"docs/configuration.md is out of date; run: {REGENERATE}"


@pytest.mark.parametrize("spec", fields(Settings), ids=lambda spec: spec.name)
def test_each_documented_variable_is_read_from_the_environment(spec: Any) -> None:
    meta = spec.metadata
    assert meta.get("doc") and meta.get("applies"), f"declare Settings.{spec.name} with setting(doc, applies)"
    env = meta["env"] or spec.name.upper()
    assert f"`{env}`" in configuration_doc()
    value = _probe(env, spec.default)
    loaded = getattr(Settings.from_env({env: value}), spec.name)
    assert loaded != spec.default, f"{env}={value} did not change Settings.{spec.name}; is it read in from_env?"
