"""Which build of `registry.behaviour_fast` the behaviour import runs: the compiled one
(``registry._fast_native``, made by ``python3 -m registry.build``, `make native`) when it is present, was
built from the source as it is now, and the environment does not set ``TANHUI_BEHAVIOUR_PURE=1``;
otherwise the source itself. Both give the same results (the tests run both); the compiled one is
several times quicker in the importer's loops, and its `Row` is a compiled class."""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "behaviour_fast.py")


@functools.cache
def source_sha256() -> str:
    with open(_SOURCE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@functools.cache
def native() -> Any:
    """The compiled module, or None (absent, built from another source, or not wanted)."""
    if os.environ.get("TANHUI_BEHAVIOUR_PURE") == "1":
        return None
    try:
        from registry import _fast_native  # type: ignore[attr-defined]
    except ImportError:
        return None
    if getattr(_fast_native, "SOURCE_SHA256", None) != source_sha256():
        return None   # a build of an older source: its rows or packing may differ from this one's
    return _fast_native


def fast(name: str) -> Any:
    """`name` of the compiled build if it serves (see `native`), else of the source."""
    module = native()
    if module is not None and hasattr(module, name):
        return getattr(module, name)
    from registry import behaviour_fast

    return getattr(behaviour_fast, name)
