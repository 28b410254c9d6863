"""Save and load parameters (or any nested dict of arrays) as ``.npz``, never with pickle.

A model made of several modules is a nested dict such as
``{"encoder": lstm.state_dict(), "head": dense.state_dict()}``; it is stored flat with
dotted keys (``"encoder.weight_ih_l0"``, ``"head.bias"``) and loaded back nested. Arrays
are written with ``allow_pickle=False`` and read with ``np.load(..., allow_pickle=False)``,
so object arrays are refused both ways and loading a file never runs code.
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Mapping

import numpy as np

__all__ = ["save", "load", "flatten", "unflatten"]

PathLike = str | os.PathLike


def flatten(tree: Mapping[str, Any], name: str = "state") -> dict[str, Any]:
    """Nested mappings -> one flat dict with dotted keys; leaves are kept as they are.

    Keys must be non-empty strings without ``"."`` (else ``ValueError`` naming ``name``),
    so that :func:`unflatten` restores exactly the same nesting. Empty sub-dicts vanish.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"{name} must be a mapping, got {type(tree).__name__}")
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"{name}: keys must be non-empty strings without '.', got {key!r}")
        if isinstance(value, Mapping):
            for sub, leaf in flatten(value, f"{name}[{key!r}]").items():
                flat[f"{key}.{sub}"] = leaf
        else:
            flat[key] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat dict with dotted keys -> nested dicts (the inverse of :func:`flatten`)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r} nests under a leaf {p!r}")
        if last in node:
            raise ValueError(f"key {key!r} is both a leaf and a group")
        node[last] = value
    return tree


def _cast_in_range(a: Any, dtype: Any, name: str) -> np.ndarray:
    """The real array ``a`` cast to the floating ``dtype``; ValueError naming ``name`` if
    a finite value is beyond the dtype's range (the cast would make it inf)."""
    a = np.asarray(a)
    dtype = np.dtype(dtype)
    if a.dtype.kind != "f" or a.dtype.itemsize <= dtype.itemsize:
        return a.astype(dtype, copy=False)  # integers and narrower floats always fit
    with np.errstate(over="ignore"):
        out = a.astype(dtype)
    beyond = np.isinf(out) & np.isfinite(a)
    if beyond.any():
        raise ValueError(
            f"{name} has values beyond the range of {dtype} (largest magnitude "
            f"{np.max(np.abs(a[beyond])):.6g}; {dtype} holds magnitudes up to "
            f"{np.finfo(dtype).max:.6g})"
        )
    return out


def save(path: PathLike, state: Mapping[str, Any], compress: bool = False) -> None:
    """Write ``state`` (a possibly nested dict of array-likes) to the ``.npz`` file ``path``.

    The file is written whole and then moved into place, so a crash never leaves a torn
    checkpoint. Object arrays: ``TypeError``; keys as in :func:`flatten`.
    """
    arrays = {k: np.asarray(v) for k, v in flatten(state).items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise TypeError(f"state[{k!r}] is an object array; only plain arrays can be saved")
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        with zipfile.ZipFile(
            tmp, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        ) as zf:
            for k, v in arrays.items():
                with zf.open(k + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, v, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save` (or ``np.savez``) back as nested dicts of arrays.

    Uses ``np.load(path, allow_pickle=False)``: a file holding object arrays raises
    ``ValueError``, as does a file that is not an ``.npz`` archive.
    """
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"path {os.fspath(path)!r} holds a single array, not an .npz archive")
    with data:
        try:
            return unflatten({k: data[k] for k in data.files})
        except ValueError as e:
            raise ValueError(f"cannot load {os.fspath(path)!r}: {e}") from None
