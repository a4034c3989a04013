"""Array namespaces: the same kernel code runs on JAX, NumPy and CuPy arrays.

Kernels never switch a global backend: they look at the arrays they are given.
"""

from __future__ import annotations

import types

import numpy as np

from .exceptions import BackendUnavailable, InvalidArgument

BACKENDS = ("jax", "numpy", "cupy")


def _jax_namespace() -> types.SimpleNamespace:
    import jax.numpy as jnp
    import jax.scipy.special as jss

    return types.SimpleNamespace(
        name="jax", xp=jnp, gammaln=jss.gammaln, xlogy=jss.xlogy, asarray=jnp.asarray
    )


def _numpy_namespace() -> types.SimpleNamespace:
    import scipy.special as ss

    return types.SimpleNamespace(
        name="numpy", xp=np, gammaln=ss.gammaln, xlogy=ss.xlogy, asarray=np.asarray
    )


def _cupy_namespace() -> types.SimpleNamespace:
    try:
        import cupy
        import cupyx.scipy.special as cs
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise BackendUnavailable(
            "backend='cupy' needs CuPy and a CUDA device: pip install 'gpufit[cuda]'"
        ) from err
    return types.SimpleNamespace(
        name="cupy", xp=cupy, gammaln=cs.gammaln, xlogy=cs.xlogy, asarray=cupy.asarray
    )


_FACTORIES = {"jax": _jax_namespace, "numpy": _numpy_namespace, "cupy": _cupy_namespace}
_CACHE: dict[str, types.SimpleNamespace] = {}


def get_namespace(backend: str) -> types.SimpleNamespace:
    """The namespace (``xp``, ``gammaln``, ``xlogy``, ``asarray``) of a backend by name."""
    if backend not in _FACTORIES:
        raise InvalidArgument(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in _CACHE:
        _CACHE[backend] = _FACTORIES[backend]()
    return _CACHE[backend]


def namespace_of(array) -> types.SimpleNamespace:
    """The namespace of an array (a JAX tracer counts as JAX)."""
    module = type(array).__module__
    if module.startswith(("jax", "jaxlib")):
        return get_namespace("jax")
    if module.startswith("cupy"):
        return get_namespace("cupy")
    return get_namespace("numpy")
