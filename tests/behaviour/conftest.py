"""Fixtures shared by the behaviour import's tests."""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

from registry import behaviour_fast

# The builds of `registry.behaviour_fast` the tests run: its source and, unless the environment asks
# for the source only, its compiled build (`python3 -m registry.build`; skipped when absent).
IMPLS = ["pure"] if os.environ.get("TANHUI_BEHAVIOUR_PURE") == "1" else ["pure", "native"]


@pytest.fixture(params=IMPLS, scope="module")
def fast_module(request: pytest.FixtureRequest) -> Any:
    """`registry.behaviour_fast`, the source or its compiled build."""
    if request.param == "pure":
        return behaviour_fast
    try:
        return importlib.import_module("registry._fast_native")
    except ImportError:
        pytest.skip("compiled build absent (python3 -m registry.build)")
