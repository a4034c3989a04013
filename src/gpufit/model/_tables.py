"""Index tables derived from the compiled model's layout: where each entry of the
analytic derivatives comes from (read by :mod:`gpufit.likelihood.derivatives`), the
constraint terms laid out per parameter, and which parameters carry a constraint term
(the split the optimizer's structured solve is built on).

Built once in NumPy, so that the jitted kernels only gather (XLA's scatters are slow on
CPUs, and a batch of them slower still).
"""

from __future__ import annotations

import numpy as np


def _entry_parameters(factor_index, delta_index, n_pars, normsys_par, histosys_par):
    """The parameter of each factor entry [K, M] and histosys entry [K, H] (-1: padding)."""
    par_of_factor = np.concatenate([np.arange(n_pars), normsys_par, [-1]]).astype(np.int64)
    par_of_delta = np.concatenate([histosys_par, [-1]]).astype(np.int64)
    return par_of_factor[np.asarray(factor_index)], par_of_delta[np.asarray(delta_index)]


def _group(pairs, pad):
    """Positions in ``pairs`` [E] that share a key (negative: none), grouped.

    Returns:
        keys [Z] int, the distinct keys in ascending order;
        entries [max(Z, 1), L] int, the positions of each key in ascending order, padded
        with ``pad`` (L: the largest group, at least 1).
    """
    valid = np.flatnonzero(pairs >= 0)
    order = valid[np.argsort(pairs[valid], kind="stable")]
    keys, starts, counts = np.unique(pairs[order], return_index=True, return_counts=True)
    width = int(counts.max()) if counts.size else 1
    entries = np.full((max(keys.size, 1), width), pad, dtype=np.int32)
    for z, (start, count) in enumerate(zip(starts, counts)):
        entries[z, :count] = order[start:start + count]
    return keys, entries


def jacobian_tables(factor_index, delta_index, bin_of, n_pars, normsys_par, histosys_par, n_main):
    """Where each entry of the Jacobian ``d nu_b / d theta_p`` [N, P] comes from.

    The kernel forms one contribution per factor entry [K, M] and one per histosys term
    [Th] (each term shifts one sample-bin: its contribution needs no [K, H] layout),
    flattened into ``c = concat(c_factor.ravel(), c_histosys, [0])``.

    Returns:
        entries [Z, L] int: for each of the Z (bin, parameter) pairs that can be
            non-zero, the positions in ``c`` to sum (padded with the trailing zero).
        index [N * P] int: position of pair (b, p) among the Z sums, or Z (a zero).
    """
    pf, pd = _entry_parameters(factor_index, delta_index, n_pars, normsys_par, histosys_par)
    bins = np.asarray(bin_of, dtype=np.int64)
    pair_f = np.where(pf >= 0, bins[:, None] * n_pars + pf, -1).ravel()
    pair_d = np.where(pd >= 0, bins[:, None] * n_pars + pd, -1).ravel()
    pairs = np.concatenate([pair_f, pair_d])
    keys, entries = _group(pairs, pad=pairs.size)  # positions among the pairs; pairs.size: none
    # a pair's position in c: factor entries in place, histosys entries at their term
    n_f = pair_f.size
    position = np.concatenate([np.arange(n_f), n_f + np.asarray(delta_index, dtype=np.int64).ravel(),
                               [n_f + len(histosys_par)]])
    entries = position[entries].astype(np.int32)
    index = np.full(n_main * n_pars, max(keys.size, 1), dtype=np.int32)
    index[keys] = np.arange(keys.size, dtype=np.int32)
    return entries, index


def histosys_sample_bins(delta_index, n_hist):
    """The sample-bin [Th] of each histosys term (0 for a term no sample-bin lists: the
    padding of a stacked model)."""
    rows = np.broadcast_to(np.arange(delta_index.shape[0])[:, None], delta_index.shape)
    out = np.zeros(n_hist, dtype=np.int32)
    real = delta_index < n_hist
    out[delta_index[real]] = rows[real]
    return out


def sample_bin_tables(factor_index, delta_index, n_pars, normsys_par, histosys_par):
    """Where each per-sample-bin derivative ``d F_k / d theta_p`` and ``d B_k / d theta_p``
    [K, P] comes from (``F_k``: the product of sample-bin k's factors, ``B_k``: its
    nominal plus histosys shifts), for the exact Hessian.

    Returns:
        factor_of [K, P, Lf] int: positions in the flattened factor entries [K * M]
            (K * M, a padding zero, where none) whose contributions sum to (k, p);
        delta_of [K, P, Ld] int: the same for the histosys entries [K * H].
        Lf and Ld are the largest number of entries of one parameter in one sample-bin
        (1 in every published model seen so far).
    """

    def table(pars):  # pars [K, W]: the parameter of each entry
        k, width = pars.shape
        rows = np.arange(k, dtype=np.int64)[:, None]
        keys, entries = _group(np.where(pars >= 0, rows * n_pars + pars, -1).ravel(), pad=k * width)
        out = np.full((k * n_pars, entries.shape[1]), k * width, dtype=np.int32)
        out[keys] = entries[: keys.size]
        return out.reshape(k, n_pars, -1)

    pf, pd = _entry_parameters(factor_index, delta_index, n_pars, normsys_par, histosys_par)
    return table(pf), table(pd)


def constraint_tables(n_pars, n_aux, gauss_par, gauss_aux, gauss_sigma, pois_par, pois_aux, pois_tau):
    """Constraint terms laid out per parameter (each parameter has at most one).

    Returns:
        con_aux [P] int: the parameter's auxiliary datum, or A (a padding zero);
        con_gauss [P], con_pois [P]: 1.0 where the constraint is of that kind;
        con_sigma [P]: Gaussian width (1.0 elsewhere); con_tau [P]: Poisson scale
        factor (1.0 elsewhere).
    """
    con_aux = np.full(n_pars, n_aux, dtype=np.int32)
    con_gauss = np.zeros(n_pars)
    con_pois = np.zeros(n_pars)
    con_sigma = np.ones(n_pars)
    con_tau = np.ones(n_pars)
    con_aux[gauss_par] = gauss_aux
    con_gauss[gauss_par] = 1.0
    con_sigma[gauss_par] = gauss_sigma
    con_aux[pois_par] = pois_aux
    con_pois[pois_par] = 1.0
    con_tau[pois_par] = pois_tau
    return con_aux, con_gauss, con_pois, con_sigma, con_tau


def single_bins(jac_index, n_pairs, n_main, n_pars):
    """The one main bin each parameter's column of the Jacobian ``d nu / d theta`` can be
    non-zero in (``jac_index`` [N * P] of :func:`jacobian_tables`, ``n_pairs`` its Z):
    [P] int, ``b`` for one bin, ``n_main`` for none (the parameter acts on no main bin),
    -1 for several. A staterror or shapesys gamma acts on one bin, as does any modifier
    of a one-bin channel."""
    acts = np.asarray(jac_index).reshape(n_main, n_pars) < n_pairs  # [N, P]
    count = acts.sum(axis=0)
    return np.where(count == 0, n_main, np.where(count == 1, np.argmax(acts, axis=0), -1)).astype(np.int32)


def solver_partition(constrained_mask, single_bin, n_main) -> dict:
    """Split the parameters as the damped step solves for them (``_solver.solve_damped``).

    The Newton matrix is ``J^T W J + diag(d)`` with few main bins N: its constrained
    block has ``d > 0`` and is inverted through the N x N Woodbury identity
    ``W^-1 + J_C D_C^-1 J_C^T``, the few unconstrained parameters (POI, normfactors,
    shapefactors) through their Schur complement. A constrained parameter that acts on
    one main bin (``single_bin`` [P], :func:`single_bins`) adds to that matrix's diagonal
    only: the product runs over the others ("spread"), which on a model with a gamma per
    bin are a small part (gen300's 120 bins: 21 of 261). At least one parameter is put
    in the unconstrained set (any split is exact), so that array is never empty.

    Returns:
        ``CompiledModel`` fields: unconstrained [U], spread [G] and local [L] int (the
        parameters), local_bin [L] int (their bin; 0 for one that acts on none), and
        partition_inverse [P] int with
        ``concat(x[unconstrained], x[spread], x[local])[partition_inverse] == x``.
    """
    free = np.flatnonzero(~constrained_mask)
    cons = np.flatnonzero(constrained_mask)
    if free.size == 0:
        free, cons = cons[:1], cons[1:]
    one = single_bin[cons] >= 0
    spread, local = cons[~one], cons[one]
    order = np.concatenate([free, spread, local])
    inverse = np.empty(constrained_mask.size, dtype=np.int32)
    inverse[order] = np.arange(constrained_mask.size, dtype=np.int32)
    local_bin = np.where(single_bin[local] < n_main, single_bin[local], 0)
    return {"unconstrained": free.astype(np.int32), "spread": spread.astype(np.int32),
            "local": local.astype(np.int32), "local_bin": local_bin.astype(np.int32), "partition_inverse": inverse}


def layout_tables(factor_index, delta_index, bin_of, n_pars, normsys_par, histosys_par, n_main) -> dict:
    """Every table derived from the modifier layout, as ``CompiledModel`` fields:
    histosys_bin, jac_entries, jac_index, factor_of, delta_of."""
    normsys_par = np.asarray(normsys_par, dtype=np.int64)
    histosys_par = np.asarray(histosys_par, dtype=np.int64)
    jac_entries, jac_index = jacobian_tables(factor_index, delta_index, bin_of, n_pars, normsys_par, histosys_par,
                                             n_main)
    factor_of, delta_of = sample_bin_tables(factor_index, delta_index, n_pars, normsys_par, histosys_par)
    return {"histosys_bin": histosys_sample_bins(delta_index, histosys_par.size), "jac_entries": jac_entries,
            "jac_index": jac_index, "factor_of": factor_of, "delta_of": delta_of}


def constraint_fields(n_pars, n_aux, gauss, pois, constrained_mask, layout: dict, n_main, dtype) -> dict:
    """The per-parameter constraint tables (:func:`constraint_tables` of the Gaussian
    terms ``gauss`` = (par, aux, sigma) and Poisson ones ``pois`` = (par, aux, tau)) and
    the solver's split (:func:`solver_partition` of ``constrained_mask`` [P] and the
    Jacobian's pairs in ``layout``, :func:`layout_tables`), as ``CompiledModel`` fields."""
    con_aux, *floats = constraint_tables(n_pars, n_aux, *gauss, *pois)
    fields = dict(zip(("con_gauss", "con_pois", "con_sigma", "con_tau"), (np.asarray(a, dtype=dtype) for a in floats)))
    one = single_bins(layout["jac_index"], layout["jac_entries"].shape[0], n_main, n_pars)
    return fields | {"con_aux": con_aux} | solver_partition(constrained_mask, one, n_main)
