"""The backends (layer 2 of the design): what runs one recurrent layer in one direction.

A backend is a module with the functions of the contract in :mod:`fastrnn.backends.spec`:
``forward`` and ``backward`` of one layer in one direction over a packed batch, and
optionally ``copy``, ``forward_both`` / ``backward_both`` (both directions at once) and
``forward_stack`` (stacked layers at once). The layers (:mod:`fastrnn.layers`) call only
these, so a backend can be swapped by name without the layers knowing which one runs:

- ``"compiled"``: :mod:`fastrnn.backends.compiled`, the adapter of the C kernels
  (``fastrnn._kernels``);
- ``"reference"``: :mod:`fastrnn.backends.reference`, plain NumPy written from the
  equations, the yardstick of the compiled one.

This module may import only :mod:`importlib`: the backends themselves are imported when a
layer first asks for one, so that a missing compiled extension leaves the reference usable.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load"]

# name (the layers' ``backend=`` argument) -> module
_MODULES = {"compiled": "fastrnn.backends.compiled", "reference": "fastrnn.backends.reference"}


def load(name: Any):
    """The backend module called ``name``; ValueError for an unknown name, ImportError (with
    what to do) for one that cannot be imported."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"backend must be one of {sorted(_MODULES)}, got {name!r}")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        hint = (
            " (build the extension with `pip install .`, or use backend='reference')"
            if name == "compiled"
            else ""
        )
        raise ImportError(f"fastrnn backend {name!r} is not available: {exc}{hint}") from exc
