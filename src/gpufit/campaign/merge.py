"""``merge``: the results of a campaign, checked, into ``hypotest``/``limit`` answers.

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
from ..infer.toy_pvalues import toy_pvalues
from ._files import BrokenResult, CampaignError, read_result
from .plan import load_campaign, planned_jobs


def _collect(directory: str, campaign: dict):
    """Verified results per mu index: {i: [(start, stop, sb, b, path, checksum)]}, obs [M],
    and {device: number of result files} (each result names the device that computed it)."""
    per_mu: dict[int, list] = {i: [] for i in range(len(campaign["mus"]))}
    devices: dict[str, int] = {}
    obs = np.full(len(campaign["mus"]), np.nan)
    problems = []
    for path in sorted(glob.glob(os.path.join(directory, "results", "*.npz"))):
        if path.endswith(".checkpoint.npz"):
            continue
        try:
            meta, sb, b, extra = read_result(path, extra=("teststat_obs",))
        except BrokenResult as err:
            problems.append(str(err))
            continue
        if meta["campaign_id"] != campaign["campaign_id"]:
            problems.append(f"{path} belongs to campaign {meta['campaign_id']}, not {campaign['campaign_id']}")
            continue
        for row, i in enumerate(meta["mu_indices"]):
            per_mu[i].append((meta["toy_start"], meta["toy_stop"], sb[row], b[row], path, meta["checksum"]))
            obs[i] = extra["teststat_obs"][row]
        device = meta.get("device", "unknown")
        devices[device] = devices.get(device, 0) + 1
    if problems:
        raise CampaignError(
            "refusing to merge: " + "; ".join(problems)
            + ". Run 'gpufit campaign run DIR' to redo broken jobs, or remove foreign files."
        )
    return per_mu, obs, devices


def merge(directory: str, allow_partial: bool = False, level: float = 0.05) -> dict:
    """Merge a campaign: p-values per mu, limits for several mu, and toy accounting."""
    level = check_level(level)
    campaign = load_campaign(directory)
    per_mu, obs, devices = _collect(directory, campaign)
    mus = np.asarray(campaign["mus"])
    ntoys = campaign["ntoys"]
    counted, duplicates, covered = np.zeros(len(mus), int), [], {}
    sb_all, b_all = [], []
    for i in range(len(mus)):
        parts = sorted(per_mu[i], key=lambda p: (p[0], p[1]))
        unique = []
        for part in parts:
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
        covered[i] = [(p[0], p[1]) for p in unique]
        counted[i] = sum(p[1] - p[0] for p in unique)
        sb_all.append(np.concatenate([p[2] for p in unique]) if unique else np.zeros(0))
        b_all.append(np.concatenate([p[3] for p in unique]) if unique else np.zeros(0))
    missing = [
        j["job"] for j in planned_jobs(campaign)
        if not any(s <= j["toy_start"] and j["toy_stop"] <= e for i in j["mu_indices"] for s, e in covered[i])
    ]
    if missing and not allow_partial:
        raise CampaignError(
            f"{len(missing)} of {campaign['n_jobs']} jobs have no result ({', '.join(missing[:10])}"
            f"{', ...' if len(missing) > 10 else ''}); run 'gpufit campaign run {directory}' or merge "
            "with --allow-partial for an answer from the toys there are"
        )
    results = [toy_pvalues(obs[i], sb_all[i], b_all[i]) if counted[i] else None for i in range(len(mus))]
    n_failed = int(sum(np.isnan(s).sum() + np.isnan(b).sum() for s, b in zip(sb_all, b_all)))
    toys = {"expected_per_mu": ntoys, "counted_per_mu": counted.tolist(), "missing_jobs": missing,
            "duplicates_ignored": duplicates, "partial": bool(missing), "n_failed": n_failed}
    base = {"campaign_id": campaign["campaign_id"], "seed": campaign["seed"], "test_stat": campaign["test_stat"],
            "calculator": "toys", "toys": toys, "n_failed": n_failed, "devices": devices}
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
