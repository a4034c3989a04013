"""Many compiled models in one: the signal points of a patchset, padded to one shape.

The patches of a patchset change numbers (yields, modifier data) and which modifiers
the signal sample carries, so the compiled tables of two points differ in length (the
sample-bins K, normsys terms Tn, histosys terms Th, entries per sample-bin M and H).
Padded to the longest of each, every point fits one shape, and one compiled kernel
serves them all. Padding is inert: a padded sample-bin has nominal 0 and no bin, a
padded normsys term is the factor 1 (log hi = log lo = 0, code4 coefficients 0), a
padded histosys term the shift 0, and no table entry points at them.

Points can share a shape only if they share their parameters and constraints (P, the
auxiliary data, the solve partition): :func:`stack_key` says which can. Points whose
parameters differ are first laid out in the union of their parameters
(:mod:`._union`), which :func:`pad_models` does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._compiled import ARRAY_FIELDS, CompiledModel
from ._tables import layout_tables, single_bins, solver_partition
from ._union import in_union, structure_key, union_layout

# arrays that must agree in shape (not in value) for points to be stacked
_SHAPE_FIXED = ("gauss_par", "pois_par", "aux_order", "con_aux", "unconstrained", "jac_index")


def stack_key(m: CompiledModel) -> tuple:
    """Points whose keys are equal can be stacked into one shape (:func:`stack`)."""
    return structure_key(m) + (m.con_aux.shape[0],) + tuple(getattr(m, name).shape for name in _SHAPE_FIXED)


def _pad(a, shape, value):
    """``a`` padded at the end of each axis to ``shape`` with ``value``."""
    out = np.full(shape, value, dtype=a.dtype)
    out[tuple(slice(0, n) for n in a.shape)] = a
    return out


def _padded(m: CompiledModel, k: int, width_f: int, width_d: int, n_norm: int, n_hist: int) -> CompiledModel:
    """One model's base tables padded to K = ``k`` sample-bins, ``width_f`` factor and
    ``width_d`` histosys entries per sample-bin, ``n_norm`` and ``n_hist`` terms; the
    derived tables rebuilt from them (the rules of ``_tables``)."""
    n_pars = m.con_aux.shape[0]
    old_f, old_d = n_pars + m.normsys_par.shape[0], m.histosys_par.shape[0]  # their trailing 1.0 and 0.0
    factor_index = np.where(m.factor_index == old_f, n_pars + n_norm, m.factor_index)
    factor_index = _pad(factor_index, (k, width_f), n_pars + n_norm)
    delta_index = _pad(np.where(m.delta_index == old_d, n_hist, m.delta_index), (k, width_d), n_hist)
    bin_matrix = _pad(m.bin_matrix, (k, m.bin_matrix.shape[1]), 0.0)
    # padded sample-bins lie in no bin; their entries are all padding, so any bin will do
    bin_of = np.argmax(bin_matrix, axis=1)
    normsys_par = _pad(m.normsys_par, (n_norm,), 0)
    histosys_par = _pad(m.histosys_par, (n_hist,), 0)
    return dataclasses.replace(
        m,
        nominal=_pad(m.nominal, (k,), 0.0),
        bin_matrix=bin_matrix,
        factor_index=factor_index,
        delta_index=delta_index,
        normsys_par=normsys_par,
        normsys_log_hi=_pad(m.normsys_log_hi, (n_norm,), 0.0),
        normsys_log_lo=_pad(m.normsys_log_lo, (n_norm,), 0.0),
        normsys_coef=_pad(m.normsys_coef, (n_norm, 6), 0.0),
        histosys_par=histosys_par,
        histosys_up=_pad(m.histosys_up, (n_hist,), 0.0),
        histosys_down=_pad(m.histosys_down, (n_hist,), 0.0),
        **layout_tables(factor_index, delta_index, bin_of, n_pars, normsys_par, histosys_par, m.n_main),
    )


def pad_shape(models: list[CompiledModel]) -> dict:
    """The smallest padded shape all ``models`` fit (one :func:`stack_key`): the lengths
    of their tables, as a JSON-ready dict for :func:`pad_to`.

    Raises:
        ValueError: the models differ in what padding cannot reconcile
            (:func:`stack_key`); group them by that key first.
    """
    if not models:
        raise ValueError("a padded shape needs at least one model")
    if len({stack_key(m) for m in models}) > 1:
        raise ValueError("these models differ in their parameters or constraints; stack them by stack_key")

    def most(name, axis):
        return int(max(getattr(m, name).shape[axis] for m in models))

    # the derived tables' lengths do not change with the padding (it adds no entries)
    return {"n_pars": most("con_aux", 0), "n_main": int(models[0].n_main), "k": most("nominal", 0), "width_f": most("factor_index", 1), "width_d": most("delta_index", 1),
            "n_norm": most("normsys_par", 0), "n_hist": most("histosys_par", 0), "z": most("jac_entries", 0),
            "width_z": most("jac_entries", 1), "width_lf": most("factor_of", 2), "width_ld": most("delta_of", 2)}


def pad_to(m: CompiledModel, shape: dict) -> CompiledModel:
    """``m`` padded to ``shape`` (:func:`pad_shape` of a family it belongs to)."""
    k, width_f, width_d = shape["k"], shape["width_f"], shape["width_d"]
    fits = (m.con_aux.shape[0] == shape["n_pars"] and m.n_main == shape["n_main"] and m.nominal.shape[0] <= k and m.factor_index.shape[1] <= width_f and m.delta_index.shape[1] <= width_d
            and m.normsys_par.shape[0] <= shape["n_norm"] and m.histosys_par.shape[0] <= shape["n_hist"]
            and m.jac_entries.shape[0] <= shape["z"] and m.jac_entries.shape[1] <= shape["width_z"]
            and m.factor_of.shape[2] <= shape["width_lf"] and m.delta_of.shape[2] <= shape["width_ld"])
    if not fits:
        raise ValueError("the model does not fit the padded shape (other parameters, or longer tables); "
                         "compute the shape with this model among the others")
    padded = _padded(m, k, width_f, width_d, shape["n_norm"], shape["n_hist"])
    # the derived tables differ in their number of (bin, parameter) pairs Z and entry
    # widths: pad them too (padding entries point at the trailing zero of each flat array)
    z, n_pars = shape["z"], m.con_aux.shape[0]
    return dataclasses.replace(
        padded,
        jac_entries=_pad(padded.jac_entries, (z, shape["width_z"]), k * width_f + shape["n_hist"]),
        # a pair with no entries indexes past the sums, into the zero _assemble appends;
        # keep it there now that there are more (all-zero) sums
        jac_index=np.where(padded.jac_index == padded.jac_entries.shape[0], z, padded.jac_index).astype(np.int32),
        factor_of=_pad(padded.factor_of, (k, n_pars, shape["width_lf"]), k * width_f),
        delta_of=_pad(padded.delta_of, (k, n_pars, shape["width_ld"]), k * width_d),
    )


def stack(models: list[CompiledModel], shape: dict | None = None) -> CompiledModel:
    """The models, padded to one shape (default: :func:`pad_shape` of them), as one
    :class:`CompiledModel` whose arrays have a leading axis [S] (point s:
    ``take(stacked, s)``)."""
    shape = shape or pad_shape(models)
    padded = [pad_to(m, shape) for m in models]
    split = _common_split(padded)
    padded = [dataclasses.replace(m, **split) for m in padded]
    arrays = {name: np.stack([getattr(m, name) for m in padded]) for name in ARRAY_FIELDS}
    return dataclasses.replace(padded[0], **arrays)


def _common_split(models: list[CompiledModel]) -> dict:
    """One solver split (:func:`~gpufit.model._tables.solver_partition`) for models of one
    shape: a constrained parameter counts as acting on one main bin only where it acts
    on the same one (or on none) in every model, so that every point has the same
    [G] and [L] arrays (a signal's normsys may reach several bins in one point and one
    bin in another)."""
    n_main, n_pars = models[0].n_main, models[0].con_aux.shape[0]
    masks = []
    for m in models:
        mask = np.zeros(n_pars, dtype=bool)
        mask[np.concatenate([m.spread, m.local])] = True
        masks.append(mask)
    if any(not np.array_equal(mask, masks[0]) for mask in masks):
        raise ValueError("these models constrain different parameters; stack them by stack_key")
    ones = np.stack([single_bins(m.jac_index, m.jac_entries.shape[0], n_main, n_pars) for m in models])  # [S, P]
    acts = (ones >= 0) & (ones < n_main)
    first = np.where(acts, ones, n_main).min(axis=0)
    last = np.where(acts, ones, -1).max(axis=0)
    several = np.any(ones < 0, axis=0) | (acts.any(axis=0) & (first != last))
    common = np.where(several, -1, np.where(acts.any(axis=0), last, n_main)).astype(np.int32)
    return solver_partition(masks[0], common, n_main)


def take(stacked: CompiledModel, index) -> CompiledModel:
    """Point ``index`` of a stacked model: a model of the padded shape (NumPy or JAX
    arrays alike; ``index`` may be traced)."""
    return stacked.map_arrays(lambda name, a: a[index])


def pad_models(models: list, shape: dict | None = None, layout: dict | None = None) -> tuple[CompiledModel, list]:
    """Models (:class:`gpufit.Model`, one :func:`gpufit.model.families` family) in one
    parameter layout (default: :func:`gpufit.model.union_layout` of them) and padded to
    one shape (default: :func:`pad_shape` of them): the stacked tables [S, ...] (NumPy)
    and each model in that layout with its padded tables, whose kernels, fits and toys
    then share one compiled shape (the same results: padding and the parameters a point
    lacks are inert). A model whose parameters are not the layout's takes its data
    through :func:`gpufit.model.union_data`."""
    layout = layout or union_layout(models)
    views = [in_union(m, layout) for m in models]
    stacked = stack([m.compiled_numpy for m in views], shape)
    return stacked, [m.with_tables(take(stacked, i)) for i, m in enumerate(views)]
