"""Array namespaces: the same kernel code runs on JAX and NumPy arrays.

Kernels never switch a global backend: they look at the arrays they are given. CuPy is
not a backend (an earlier version listed it, but no fit or toy accepted its arrays); on a
GPU, JAX is: hand it CuPy data with ``jax.dlpack.from_dlpack(x)`` (no copy).
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import jax.scipy.special as jss
import numpy as np
import scipy.special as ss

from .exceptions import InvalidArgument

BACKENDS = ("jax", "numpy")


def _jax_namespace() -> types.SimpleNamespace:
    # put: a host array onto the device as it is (jnp.asarray compiles a conversion per shape)
    return types.SimpleNamespace(
        name="jax", xp=jnp, gammaln=jss.gammaln, xlogy=jss.xlogy, asarray=jnp.asarray, put=jax.device_put
    )


def _numpy_namespace() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        name="numpy", xp=np, gammaln=ss.gammaln, xlogy=ss.xlogy, asarray=np.asarray, put=np.asarray
    )


_FACTORIES = {"jax": _jax_namespace, "numpy": _numpy_namespace}
_CACHE: dict[str, types.SimpleNamespace] = {}


def get_namespace(backend: str) -> types.SimpleNamespace:
    """The namespace (``xp``, ``gammaln``, ``xlogy``, ``asarray``, ``put``) of a backend by name."""
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
    return get_namespace("numpy")
