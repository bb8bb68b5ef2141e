"""Tanhui's order-matching engine: one pure, deterministic book per instrument.

``from matching import OrderBook, InstrumentSpec, Event, BUY, ...``. The compiled (mypyc) build
of ``matching/engine.py`` (module ``matching._native``) is used when it has been built with
``python3 -m matching.build`` and the environment does not set ``TANHUI_MATCHING_PURE=1``;
otherwise the pure-Python source is used. ``matching.IMPLEMENTATION`` says which ("native" or
"pure"). Both are the same source, so they behave identically.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matching.engine import *  # noqa: F403
    from matching.engine import __all__ as _names

    IMPLEMENTATION: str
else:
    from matching import engine as _impl
    from matching.engine import __all__ as _names

    IMPLEMENTATION = "pure"
    if _os.environ.get("TANHUI_MATCHING_PURE") != "1":
        try:
            from matching import _native as _impl

            IMPLEMENTATION = "native"
        except ImportError:
            pass
    globals().update({_n: getattr(_impl, _n) for _n in _names})

__all__ = ["IMPLEMENTATION", *_names]
