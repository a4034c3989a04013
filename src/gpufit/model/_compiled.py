"""The compiled model: static arrays that the kernels read (a JAX pytree)."""

from __future__ import annotations

import dataclasses

import jax

ARRAY_FIELDS = (
    "nominal",  # [K] nominal rate of each sample-bin
    "bin_matrix",  # [K, N] 1 where sample-bin k falls in main bin b
    "factor_index",  # [K, M] int, into concat(pars [P], normsys factors [Tn], 1.0)
    "delta_index",  # [K, H] int, into concat(histosys deltas [Th], 0.0)
    "normsys_par",  # [Tn] int
    "normsys_log_hi",  # [Tn] log of the up factor
    "normsys_log_lo",  # [Tn] log of the down factor
    "normsys_coef",  # [Tn, 6] code4 polynomial coefficients
    "histosys_par",  # [Th] int
    "histosys_up",  # [Th] hi - nominal
    "histosys_down",  # [Th] nominal - lo
    "histosys_bin",  # [Th] int, the sample-bin each term shifts
    "gauss_par",  # [G] int, parameter of each Gaussian constraint (toy draws, expected aux data)
    "gauss_sigma",  # [G]
    "pois_par",  # [Q] int
    "pois_tau",  # [Q]
    "aux_order",  # [A] int, position of aux datum a in concat(gauss [G], pois [Q])
    # derived from the layout (model/_tables.py): the analytic derivatives' index tables,
    # the constraints per parameter, the parameters without and with a constraint term
    "jac_entries",  # [Z, L] int, Jacobian contributions summed into each (bin, par) pair
    "jac_index",  # [N * P] int, pair of each Jacobian entry (Z: identically zero)
    "factor_of",  # [K, P, Lf] int, factor entries of parameter p in sample-bin k (exact Hessian)
    "delta_of",  # [K, P, Ld] int, histosys entries of parameter p in sample-bin k
    "con_aux",  # [P] int, auxiliary datum of each parameter's constraint (A: none)
    "con_gauss",  # [P] 1.0 where the parameter has a Gaussian constraint
    "con_pois",  # [P] 1.0 where it has a Poisson constraint
    "con_sigma",  # [P] Gaussian width (1.0 elsewhere)
    "con_tau",  # [P] Poisson scale factor (1.0 elsewhere)
    "unconstrained",  # [U] int, parameters solved through the Schur complement
    "spread",  # [G] int, constrained parameters acting on several main bins (the Woodbury product)
    "local",  # [L] int, constrained parameters acting on one main bin (its diagonal)
    "local_bin",  # [L] int, that bin
    "partition_inverse",  # [P] int, concat(x[unconstrained], x[spread], x[local])[partition_inverse] == x
)
STATIC_FIELDS = ("normsys_code", "histosys_code", "n_main")


@dataclasses.dataclass(frozen=True, eq=False)
class CompiledModel:
    """All arrays a HistFactory model needs; see ``ARRAY_FIELDS`` for their shapes.

    A pytree: arrays are leaves, the interpolation codes and ``n_main`` are static,
    so a jitted kernel traces once per model structure and code choice.
    """

    nominal: object
    bin_matrix: object
    factor_index: object
    delta_index: object
    normsys_par: object
    normsys_log_hi: object
    normsys_log_lo: object
    normsys_coef: object
    histosys_par: object
    histosys_up: object
    histosys_down: object
    histosys_bin: object
    gauss_par: object
    gauss_sigma: object
    pois_par: object
    pois_tau: object
    aux_order: object
    jac_entries: object
    jac_index: object
    factor_of: object
    delta_of: object
    con_aux: object
    con_gauss: object
    con_pois: object
    con_sigma: object
    con_tau: object
    unconstrained: object
    spread: object
    local: object
    local_bin: object
    partition_inverse: object
    normsys_code: str
    histosys_code: str
    n_main: int

    def map_arrays(self, func) -> "CompiledModel":
        """A copy with ``func`` applied to every array (e.g. a change of backend)."""
        changes = {name: func(name, getattr(self, name)) for name in ARRAY_FIELDS}
        return dataclasses.replace(self, **changes)


def _flatten(m: CompiledModel):
    return (
        tuple(getattr(m, f) for f in ARRAY_FIELDS),
        tuple(getattr(m, f) for f in STATIC_FIELDS),
    )


def _unflatten(static, arrays):
    return CompiledModel(**dict(zip(ARRAY_FIELDS, arrays)), **dict(zip(STATIC_FIELDS, static)))


jax.tree_util.register_pytree_node(CompiledModel, _flatten, _unflatten)
