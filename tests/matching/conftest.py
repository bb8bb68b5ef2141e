"""Run every engine test against the pure-Python source and, when built, the mypyc build."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

IMPLS = ["pure"] if os.environ.get("TANHUI_MATCHING_PURE") == "1" else ["pure", "native"]


def load_impl(name: str) -> ModuleType:
    if name == "pure":
        return importlib.import_module("matching.engine")
    try:
        return importlib.import_module("matching._native")
    except ImportError:
        pytest.skip("compiled build absent (python3 -m matching.build)")


@pytest.fixture(params=IMPLS)
def eng(request: pytest.FixtureRequest) -> ModuleType:
    """The engine module under test: ``matching.engine`` or ``matching._native``."""
    return load_impl(request.param)
