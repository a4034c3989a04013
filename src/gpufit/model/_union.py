"""One parameter layout for the points of a grid: the union of their parameters.

The patches of a patchset may give some points a parameter the others lack (a
systematic of one signal's own). For one compiled kernel to serve every point, each
point is laid out in the union of the grid's parameters (:func:`in_union`). A parameter
the point lacks is *inert*: fixed at its initial value, read by no modifier, its
constraint term masked off (``con_gauss = con_pois = 0``: -2 log L carries pyhf's
normalization constants, so a Gaussian term at its center would still add log(2 pi sigma^2)),
and its auxiliary datum read by nothing. The point's likelihood, fits and toys are its
own:

- the union's auxiliary data are laid out in the union's parameter order; a point's own
  data go there by :func:`union_data` (the inert ones hold 0);
- the point's own Gaussian and Poisson constraint lists come first in the union's
  lists and the inert ones after, so the toys' auxiliary draws (entry i a function of
  the key and i alone) are the point's own draws;
- the solver's split into parameters with and without a constraint term is the union's,
  the same on every point (an inert parameter is fixed: the split does not matter to it).

Points can share a layout when every parameter they share has the same size and kind
of constraint on each (:func:`families`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._tables import constraint_fields, layout_tables

_KINDS = ("free", "gauss", "pois")
_WORDS = {"free": "no constraint", "gauss": "a Gaussian constraint", "pois": "a Poisson constraint"}


def structure_key(m) -> tuple:
    """What neither padding nor a union of parameters reconciles, of a compiled model
    ``m``: the interpolation codes and the main bins."""
    return (m.normsys_code, m.histosys_code, m.n_main, m.bin_matrix.shape[1])


def _groups_of(model) -> list[dict]:
    """The parameter groups of ``model``: name, size, kind of constraint, parameter
    names, initial values and bounds (JSON-ready)."""
    host = model.compiled_numpy
    init, bounds = model.suggested_init(), model.suggested_bounds()
    out = []
    for name in model.par_order:
        sl = model.parameter_slice(name)
        kind = "gauss" if host.con_gauss[sl.start] > 0 else "pois" if host.con_pois[sl.start] > 0 else "free"
        out.append({"name": name, "size": sl.stop - sl.start, "kind": kind,
                    "names": model.parameter_names[sl], "init": init[sl].tolist(), "bounds": bounds[sl].tolist()})
    return out


def _merge(groups: dict, model) -> str | None:
    """Add ``model``'s parameter groups to ``groups`` (name -> group), unless one of
    them clashes with a group of the same name: then ``groups`` is left as it was and
    the clash is returned, in words."""
    new = {}
    for group in _groups_of(model):
        known = groups.get(group["name"])
        if known is None:
            new[group["name"]] = group
        elif (known["size"], known["kind"]) != (group["size"], group["kind"]):
            return (f"parameter {group['name']!r} has {group['size']} component(s) and {_WORDS[group['kind']]} "
                    f"in one point, {known['size']} and {_WORDS[known['kind']]} in another")
    groups.update(new)
    return None


def union_layout(models) -> dict:
    """The union of the models' parameters, as a JSON-ready layout for :func:`in_union`:
    ``{"poi": name, "groups": [{"name", "size", "kind", "names", "init", "bounds"}, ...]}``:
    the first model's groups in its order, then each other model's new ones in its order
    (points that share their parameters keep their own layout); each group's values are
    the first model's that has it.

    Raises:
        ValueError: the models name different POIs, or a parameter differs in size or
            kind of constraint between them (:func:`families` keeps such points apart).
    """
    models = list(models)
    if not models:
        raise ValueError("a union layout needs at least one model")
    if len({m.poi_name for m in models}) > 1:
        raise ValueError("the models have different parameters of interest")
    groups: dict = {}
    for model in models:
        clash = _merge(groups, model)
        if clash:
            raise ValueError(clash)
    return _layout(models[0].poi_name, groups)


def _layout(poi, groups: dict) -> dict:
    return {"poi": poi, "groups": list(groups.values())}


def families(models) -> list[tuple[list[int], dict]]:
    """The models split into families that can share one layout and one compiled shape:
    (indices, :func:`union_layout` of those models) each, in order of first appearance.
    Models fall into one family unless their :func:`structure_key` differs (what padding
    cannot reconcile), their POIs differ, or a parameter they share differs in size or
    kind of constraint."""
    found: list[tuple] = []  # (key, poi, groups, indices)
    for index, model in enumerate(models):
        key = structure_key(model.compiled_numpy)
        for fkey, poi, groups, indices in found:
            if fkey == key and poi == model.poi_name and _merge(groups, model) is None:
                indices.append(index)
                break
        else:
            groups = {}
            _merge(groups, model)
            found.append((key, model.poi_name, groups, [index]))
    return [(indices, _layout(poi, groups)) for _, poi, groups, indices in found]


def _index_maps(model, layout: dict):
    """Where the model's parameters and auxiliary data go in the union: par_map [P_own],
    aux_map [A_own], the union's kinds (gauss [P], pois [P] bool) and its aux datum of
    each parameter, aux_of [P] (A where none)."""
    groups = layout["groups"]
    starts = np.cumsum([0] + [g["size"] for g in groups])
    start = {g["name"]: int(s) for g, s in zip(groups, starts)}
    n_pars = int(starts[-1])
    par_map = np.empty(model.n_pars, dtype=np.int64)
    for name in model.par_order:
        if name not in start:
            raise ValueError(f"the layout has no parameter {name!r}; make it from every model it is to hold")
        sl = model.parameter_slice(name)
        par_map[sl] = start[name] + np.arange(sl.stop - sl.start)
    kind = np.repeat([_KINDS.index(g["kind"]) for g in groups], [g["size"] for g in groups])
    gauss, pois = kind == 1, kind == 2
    constrained = np.flatnonzero(gauss | pois)
    aux_of = np.full(n_pars, constrained.size, dtype=np.int64)
    aux_of[constrained] = np.arange(constrained.size)
    host = model.compiled_numpy
    own = host.con_aux < model.n_aux  # the model's constrained parameters (one datum each)
    aux_map = np.full(model.n_aux, -1, dtype=np.int64)
    aux_map[host.con_aux[own]] = aux_of[par_map[own]]
    if np.any(aux_map < 0) or np.any(aux_of[par_map[own]] == constrained.size):
        raise ValueError("the layout's constraints do not match the model's; make it from this model among the others")
    return par_map, aux_map, gauss, pois, aux_of


def _union_tables(model, par_map, gauss, pois, aux_of):
    """The model's compiled tables (NumPy) in the union's parameters [P]."""
    host = model.compiled_numpy
    p_own, n_pars, n_aux = model.n_pars, gauss.size, int(np.count_nonzero(gauss | pois))
    inert = np.ones(n_pars, dtype=bool)
    inert[par_map] = False
    # factor entries index concat(pars [P], normsys factors [Tn], 1.0): move both parts
    fi = host.factor_index
    factor_index = np.where(fi < p_own, par_map[np.minimum(fi, p_own - 1)], fi - p_own + n_pars).astype(fi.dtype)
    normsys_par, histosys_par = par_map[host.normsys_par], par_map[host.histosys_par]
    # the point's own constraints first (its toys' draws), the inert ones after
    own_gauss, own_pois = par_map[host.gauss_par], par_map[host.pois_par]
    gauss_par = np.concatenate([own_gauss, np.flatnonzero(gauss & inert)])
    pois_par = np.concatenate([own_pois, np.flatnonzero(pois & inert)])
    aux_order = np.empty(n_aux, dtype=np.int32)
    aux_order[aux_of[np.concatenate([gauss_par, pois_par])]] = np.arange(n_aux)
    bin_of = np.argmax(host.bin_matrix, axis=1)
    layout = layout_tables(factor_index, host.delta_index, bin_of, n_pars, normsys_par, histosys_par, host.n_main)
    constraints = constraint_fields(n_pars, n_aux, (own_gauss, aux_of[own_gauss], host.gauss_sigma),
                                    (own_pois, aux_of[own_pois], host.pois_tau), gauss | pois, layout, host.n_main,
                                    host.nominal.dtype)
    dtype = host.nominal.dtype

    def ones(count):
        return np.ones(count, dtype=dtype)

    return dataclasses.replace(
        host,
        factor_index=factor_index,
        normsys_par=normsys_par.astype(np.int32),
        histosys_par=histosys_par.astype(np.int32),
        gauss_par=gauss_par.astype(np.int32),
        gauss_sigma=np.concatenate([host.gauss_sigma, ones(gauss_par.size - own_gauss.size)]),
        pois_par=pois_par.astype(np.int32),
        pois_tau=np.concatenate([host.pois_tau, ones(pois_par.size - own_pois.size)]),
        aux_order=aux_order,
        **layout,
        **constraints,
    )


def in_union(model, layout: dict):
    """``model`` (:class:`gpufit.Model`) laid out in the parameters of ``layout``
    (:func:`union_layout` of a grid's points): a model of P = the union's parameters and
    A = their auxiliary data, whose likelihood, fits and toys are ``model``'s, the
    parameters it lacks fixed and inert (module docstring). Its data: :func:`union_data`.
    ``pyhf_model`` and ``spec`` stay the point's own."""
    par_map, aux_map, gauss, pois, aux_of = _index_maps(model, layout)
    n_union = gauss.size
    if n_union == model.n_pars and np.array_equal(par_map, np.arange(n_union)) and np.array_equal(
            aux_map, np.arange(model.n_aux)):
        return model  # the layout is the model's own
    view = model.with_tables(_union_tables(model, par_map, gauss, pois, aux_of))
    groups = layout["groups"]
    starts = np.cumsum([0] + [g["size"] for g in groups])
    n_pars = int(starts[-1])
    view.parameter_names = [name for g in groups for name in g["names"]]
    view.par_order = [g["name"] for g in groups]
    view._groups = {g["name"]: slice(int(a), int(b)) for g, a, b in zip(groups, starts[:-1], starts[1:])}
    view.n_pars, view.n_aux = n_pars, int(np.count_nonzero(gauss | pois))
    view.poi_index = None if model.poi_index is None else int(par_map[model.poi_index])
    init = np.concatenate([np.asarray(g["init"], dtype=model.dtype) for g in groups])
    bounds = np.concatenate([np.asarray(g["bounds"], dtype=model.dtype).reshape(-1, 2) for g in groups])
    fixed = np.ones(n_pars, dtype=bool)
    init[par_map], bounds[par_map], fixed[par_map] = model.suggested_init(), model.suggested_bounds(), model.fixed_parameters()
    view._init, view._bounds, view._fixed = init, bounds, fixed
    view.auxdata = _aux_in_union(aux_map, view.n_aux, model.auxdata)
    view.own_layout = (par_map, aux_map)
    return view


def _aux_in_union(aux_map, n_aux: int, aux):
    """Auxiliary data [..., A_own] placed in a union's [..., A] (0 where inert)."""
    aux = np.asarray(aux)
    out = np.zeros(aux.shape[:-1] + (n_aux,), dtype=aux.dtype)
    out[..., aux_map] = aux
    return out


def union_data(view, data):
    """A point's own data [..., N + A_own] laid out for its union model ``view``
    (:func:`in_union`): [..., N + A], the inert auxiliary data 0."""
    data = np.asarray(data)
    if view.own_layout is None:  # a model in its own layout
        return data
    aux_map = view.own_layout[1]
    if data.shape[-1] != view.n_main + aux_map.size:
        raise ValueError(f"data have length {data.shape[-1]}; the point's own data have {view.n_main + aux_map.size}")
    main = data[..., : view.n_main]
    return np.concatenate([main, _aux_in_union(aux_map, view.n_aux, data[..., view.n_main :])], axis=-1)


def own_parameters(view, pars):
    """Parameters [..., P] of a union model back in the point's own order [..., P_own]."""
    pars = np.asarray(pars)
    return pars if view.own_layout is None else pars[..., view.own_layout[0]]
