"""``merge``: the results of a campaign, checked, into ``hypotest``/``limit`` answers
(a signal grid: one ``gpufit.scan`` row per point).

Refused, naming the files: a result of another campaign, a truncated or corrupt file,
two results whose toy ranges overlap (the same job twice with identical content counts
once). Missing jobs are reported; a partial answer only with ``allow_partial``.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ..infer.hypotest import cls_fields
from ..infer.intervals import check_level, toy_limit
from ..infer.toy_pvalues import DEFAULT_MAX_FAILED, check_failed, count_failed, toy_pvalues
from ..infer.toys import check_toy_options
from ..exceptions import GpufitError
from ._files import BrokenResult, CampaignError, read_result
from .plan import load_campaign, planned_jobs


def _collect(directory: str, campaign: dict, point_of: dict):
    """Verified results per (point, mu index): {(p, i): [(start, stop, sb, b, path,
    checksum)]}, the observed test statistics {(p, i): t}, and {device: number of result
    files} (each result names the device that computed it). ``point_of`` maps each
    planned job to its point (0 outside a grid)."""
    parts: dict[tuple, list] = {}
    devices: dict[str, int] = {}
    obs: dict[tuple, float] = {}
    problems = []
    for path in sorted(glob.glob(os.path.join(directory, "results", "*.npz"))):
        if path.endswith(".checkpoint.npz"):
            continue
        try:
            meta, sb, b, extra = read_result(path, extra=("teststat_obs",))
        except BrokenResult as err:
            problems.append(str(err))
            continue
        if meta["campaign_id"] != campaign["campaign_id"] or meta["job"] not in point_of:
            problems.append(f"{path} belongs to campaign {meta['campaign_id']}, not {campaign['campaign_id']}")
            continue
        p = point_of[meta["job"]]
        for row, i in enumerate(meta["mu_indices"]):
            parts.setdefault((p, i), []).append((meta["toy_start"], meta["toy_stop"], sb[row], b[row], path,
                                                 meta["checksum"]))
            obs[(p, i)] = float(extra["teststat_obs"][row])
        device = meta.get("device", "unknown")
        devices[device] = devices.get(device, 0) + 1
    if problems:
        raise CampaignError(
            "refusing to merge: " + "; ".join(problems)
            + ". Run 'gpufit campaign run DIR' to redo broken jobs, or remove foreign files."
        )
    return parts, obs, devices


def _toys_of(parts: list, i: int):
    """One (point, mu)'s results in toy order: (sb, b, toys counted, covered ranges,
    duplicates); refuses overlapping ranges (the same job twice counts once)."""
    unique, duplicates = [], []
    for part in sorted(parts, key=lambda p: (p[0], p[1])):
        if unique and part[0] < unique[-1][1]:
            prev = unique[-1]
            if (part[0], part[1], part[5]) == (prev[0], prev[1], prev[5]):
                duplicates.append(part[4])  # the same job twice: count once
                continue
            raise CampaignError(
                f"refusing to merge: {prev[4]} (toys {prev[0]}-{prev[1]}) and {part[4]} "
                f"(toys {part[0]}-{part[1]}) overlap at mu index {i}"
            )
        unique.append(part)
    sb = np.concatenate([p[2] for p in unique]) if unique else np.zeros(0)
    b = np.concatenate([p[3] for p in unique]) if unique else np.zeros(0)
    return sb, b, sum(p[1] - p[0] for p in unique), [(p[0], p[1]) for p in unique], duplicates


def merge(directory: str, allow_partial: bool = False, level: float = 0.05, max_failed: float | None = None) -> dict:
    """Merge a campaign: p-values per mu, limits for several mu, and toy accounting.

    More failed toys than ``max_failed`` (a fraction; default: the campaign's, planned
    as ``hypotest``'s) raise :class:`gpufit.ToyFitsFailed` carrying the merged answer,
    exactly as ``hypotest`` and ``upper_limit`` do on the same toys. A signal grid's
    merge has one row per point (the keys of ``gpufit.scan``), where a point with too
    many failed toys is a row with that error."""
    level = check_level(level)
    campaign = load_campaign(directory)
    if max_failed is None:
        max_failed = campaign.get("max_failed", DEFAULT_MAX_FAILED)  # campaigns planned before it was kept
    check_toy_options(max_failed=max_failed)
    point_of = {j["job"]: j.get("point", 0) for j in planned_jobs(campaign)}
    parts, obs, devices = _collect(directory, campaign, point_of)
    mus = np.asarray(campaign["mus"])
    points = campaign.get("points") or [None]
    toys_of = {(p, i): _toys_of(parts.get((p, i), []), i) for p in range(len(points)) for i in range(len(mus))}
    covered = {key: value[3] for key, value in toys_of.items()}
    missing = [
        j["job"] for j in planned_jobs(campaign)
        if not any(s <= j["toy_start"] and j["toy_stop"] <= e
                   for i in j["mu_indices"] for s, e in covered[(j.get("point", 0), i)])
    ]
    if missing and not allow_partial:
        raise CampaignError(
            f"{len(missing)} of {campaign['n_jobs']} jobs have no result ({', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}); run 'gpufit campaign run {directory}' or merge "
            "with --allow-partial for an answer from the toys there are"
        )
    duplicates = [d for value in toys_of.values() for d in value[4]]
    answers = []
    for p in range(len(points)):
        sb_all = [toys_of[(p, i)][0] for i in range(len(mus))]
        b_all = [toys_of[(p, i)][1] for i in range(len(mus))]
        counted = [toys_of[(p, i)][2] for i in range(len(mus))]
        results = [toy_pvalues(obs[(p, i)], sb_all[i], b_all[i]) if counted[i] else None for i in range(len(mus))]
        n_failed = count_failed(np.concatenate(sb_all), np.concatenate(b_all))
        toys = {"expected_per_mu": campaign["ntoys"], "counted_per_mu": counted,
                "missing_jobs": [j for j in missing if point_of[j] == p],
                "duplicates_ignored": duplicates, "partial": bool(missing), "n_failed": n_failed}
        base = {"campaign_id": campaign["campaign_id"], "seed": campaign["seed"], "test_stat": campaign["test_stat"],
                "calculator": "toys", "toys": toys, "n_failed": n_failed, "devices": devices}
        if points[p] is None:
            answer = _answer(directory, campaign, base, mus, [obs.get((0, i), np.nan) for i in range(len(mus))],
                             results, level, n_failed)
            check_failed(np.concatenate(sb_all), np.concatenate(b_all), max_failed, result=answer)
            return answer
        answers.append(_grid_row(directory, campaign, points[p], base, mus, obs, p, results, level, n_failed,
                                 (np.concatenate(sb_all), np.concatenate(b_all)), max_failed))
    return {"campaign_id": campaign["campaign_id"], "labels": campaign["labels"], "calculator": "toys",
            "test_stat": campaign["test_stat"], "mu": campaign["mu"], "level": level, "devices": devices,
            "device": ", ".join(sorted(devices)),
            "toys": {"expected_per_mu": campaign["ntoys"], "missing_jobs": missing, "duplicates_ignored": duplicates,
                     "partial": bool(missing), "n_failed": int(sum(r["n_failed"] for r in answers))},
            "points": answers}


def _grid_row(directory, campaign, point, base, mus, obs, p, results, level, n_failed, toys, max_failed) -> dict:
    """A grid point's row, with the keys of a ``gpufit.scan`` row: CLs at the campaign's
    ``mu`` (None unless it is one of the mus), the limits (None with fewer than two mus),
    ``error`` where the point has too many failed toys or no results."""
    row = {"name": point["name"], "values": point["values"], "cls_obs": None, "cls_exp": [None] * 5,
           "upper_limit_obs": None, "upper_limit_exp": [None] * 5, "n_failed": n_failed, "clsb_obs": None,
           "clb_obs": None, "limit_bounds": None, "error": None, "seed": point["seed"],
           "counted_per_mu": base["toys"]["counted_per_mu"]}
    try:
        check_failed(*toys, max_failed)
        at = np.flatnonzero(np.isclose(mus, campaign["mu"]))
        if at.size and results[at[0]] is not None:
            r = results[at[0]]
            cls = cls_fields(campaign["test_stat"], r)
            row.update(cls_obs=float(cls["cls_obs"]), cls_exp=np.asarray(cls["cls_exp"], dtype=float).tolist(),
                       clsb_obs=float(r["clsb_obs"]), clb_obs=float(r["clb_obs"]))
        if len(mus) > 1:
            lim = _answer(directory, campaign, base, mus, [obs.get((p, i), np.nan) for i in range(len(mus))],
                          results, level, n_failed)
            bounds = [lim["observed_bound"], *lim["expected_bound"]]
            row.update(upper_limit_obs=lim["observed"], upper_limit_exp=list(lim["expected"]),
                       limit_bounds=bounds if any(bounds) else None)
    except GpufitError as err:
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def _answer(directory, campaign, base, mus, obs, results, level, n_failed) -> dict:
    """The hypotest keys (one mu) or limit keys (several) of the merged p-values."""
    if len(mus) == 1:
        r = results[0]
        if r is None:
            raise CampaignError("no results to merge yet")
        cls = cls_fields(campaign["test_stat"], r)
        return base | {
            "mu": float(mus[0]), "teststat": float(obs[0]),
            "cls_obs": cls["cls_obs"], "clsb_obs": r["clsb_obs"], "clb_obs": r["clb_obs"],
            "cls_obs_err": cls["cls_obs_err"], "cls_exp": np.asarray(cls["cls_exp"]).tolist(),
            "clsb_exp": r["clsb_exp"].tolist(), "clb_exp": r["clb_exp"].tolist(),
        }
    have = [i for i in range(len(mus)) if results[i] is not None]
    grid = mus[have]
    values = np.array([[results[i]["cls_obs"], *results[i]["cls_exp"]] for i in have])
    if len(have) < 2:
        raise CampaignError(
            f"results for {len(have)} of {len(mus)} mu points; a limit needs at least two. "
            f"Run 'gpufit campaign run {directory}'"
        )
    # the CLI and the caller say it when a limit is a bound of the grid
    return base | toy_limit(grid, values, level, campaign["test_stat"], n_failed, warn=False).to_dict()
