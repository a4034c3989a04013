"""Campaigns: plan, run-job, run (local and a real Dask LocalCluster), merge, and faults."""

import glob
import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import WS, strict_json

import gpufit
from gpufit import campaign, executors
from gpufit.campaign import CampaignError
from gpufit.campaign._files import read_result
from gpufit.cli import main

MUS = [0.5, 1.5]
NTOYS, PER_JOB = 64, 32  # 2 mu points x 2 jobs


@pytest.fixture(scope="module")
def docs():
    return gpufit.Workspace.load(os.path.join(WS, "pyhf_docs_2-bin_1-channel.json"))


def _plan(ws, path, seed=3, mus=MUS, ntoys=NTOYS, per_job=PER_JOB, **kw):
    return campaign.plan(ws, str(path), mus, ntoys, per_job, seed, chunk_size=16, **kw)


def _arrays(directory):
    """{job: (teststat_sb, teststat_b)} of a campaign's results."""
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "results", "job-*.npz"))):
        if path.endswith(".checkpoint.npz"):
            continue
        meta, sb, b, _ = read_result(path, extra=("teststat_obs",))
        out[meta["job"]] = (sb, b)
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0])
        np.testing.assert_array_equal(a[key][1], b[key][1])


@pytest.fixture(scope="module")
def local_run(docs, tmp_path_factory):
    path = tmp_path_factory.mktemp("local")
    _plan(docs, path)
    summary = executors.run(str(path), executor="local")
    assert len(summary["ran"]) == 4
    return str(path)


@pytest.mark.parametrize("test_stat", ["qtilde", "q0"])
def test_one_point_campaign_equals_hypotest(docs, tmp_path, test_stat):
    """A one-point campaign reports what hypotest reports (for q0: p0 in the CLs fields)."""
    model = docs.model()
    data = docs.data(model)
    _plan(docs, tmp_path, seed=9, mus=[1.0], ntoys=48, per_job=16, test_stat=test_stat)
    executors.run(str(tmp_path))
    merged = campaign.merge(str(tmp_path))
    r = gpufit.hypotest(model, data, 1.0, test_stat=test_stat, calculator="toys", ntoys=48, seed=9, chunk_size=16,
                        progress=False)
    sb = np.concatenate([v[0][0] for _, v in sorted(_arrays(str(tmp_path)).items())])
    np.testing.assert_array_equal(sb, r.teststat_sb)
    assert merged["cls_obs"] == r.cls_obs and merged["cls_exp"] == list(r.cls_exp)
    assert merged["cls_obs_err"] == r.cls_obs_err
    if test_stat == "q0":
        assert merged["cls_exp"] == merged["clsb_exp"] != list(np.asarray(r.clb_exp))
    assert merged["toys"]["counted_per_mu"] == [48] and not merged["toys"]["partial"]
    assert merged["devices"] == {"cpu:0 cpu": 3}  # three jobs, each result names its device


def test_jobs_one_by_one_and_reruns_are_no_ops(docs, local_run, tmp_path):
    _plan(docs, tmp_path)
    for job in sorted(glob.glob(str(tmp_path / "jobs" / "*.json"))):
        assert campaign.run_job(job)["status"] == "done"
        assert campaign.run_job(job)["status"] == "skipped"
    _assert_same(_arrays(str(tmp_path)), _arrays(local_run))
    assert executors.run(str(tmp_path))["ran"] == []
    limit = campaign.merge(str(tmp_path))
    assert len(limit["mus"]) == 2 and len(limit["expected"]) == 5


@pytest.mark.slow
def test_dask_gpu_workers_run_the_campaign(docs, local_run, tmp_path, monkeypatch):
    """``--gpu`` on the embedded cluster: one worker per GPU, each declaring GPU=1 and
    seeing its own GPU alone, memory on demand. Two fake GPU ids on this CPU: the tasks ask
    for GPU=1 and the campaign finishes with the local answer (it used to wait forever for
    a resource no worker declared). The embedded cluster without ``--gpu`` (a
    LocalCluster: the same tasks, the same ``run_job``) runs in notebook 03, and a
    scheduler's address in :func:`test_killed_dask_worker_changes_nothing`."""
    from distributed import Client

    from gpufit.executors import runner as executors

    seen = {}
    make = executors._gpu_cluster

    def spy(gpus):
        cluster = make(gpus)
        with Client(cluster) as client:
            seen.update(client.run(lambda: (os.environ.get("CUDA_VISIBLE_DEVICES"),
                                            os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"))))
            seen["resources"] = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        return cluster

    monkeypatch.setattr(executors, "_gpu_cluster", spy)
    _plan(docs, tmp_path)
    summary = executors.run(str(tmp_path), executor="dask", gpu=True, gpus=["0", "1"])
    assert len(summary["ran"]) == 4
    _assert_same(_arrays(str(tmp_path)), _arrays(local_run))
    assert seen.pop("resources") == [{"GPU": 1}, {"GPU": 1}]
    assert sorted(seen.values()) == [("0", "false"), ("1", "false")]


def test_gpu_runs_refuse_a_machine_without_one(docs, tmp_path, monkeypatch):
    _plan(docs, tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(CampaignError, match="no GPU visible"):
        executors.run(str(tmp_path), executor="dask", gpu=True)
    result = CliRunner().invoke(main, ["campaign", "run", str(tmp_path), "--gpu"])
    assert result.exit_code == 2 and "no GPU in use" in result.output and "Traceback" not in result.output
    job = sorted(glob.glob(str(tmp_path / "jobs" / "*.json")))[0]
    result = CliRunner().invoke(main, ["campaign", "run-job", job, "--require-gpu"])
    assert result.exit_code == 2 and "--require-gpu: JAX runs on cpu" in result.output
    assert not glob.glob(str(tmp_path / "results" / "*"))  # nothing ran


@pytest.mark.slow
def test_killed_dask_worker_changes_nothing(docs, local_run, tmp_path):
    from distributed import Client, LocalCluster

    _plan(docs, tmp_path, ntoys=NTOYS, per_job=8)  # 16 jobs
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            pids = client.run(os.getpid)
            victim = sorted(pids)[0]

            def kill_when_started():
                deadline = time.time() + 120
                while time.time() < deadline and not glob.glob(str(tmp_path / "results" / "job-*.npz")):
                    time.sleep(0.05)
                os.kill(pids[victim], signal.SIGKILL)

            killer = threading.Thread(target=kill_when_started)
            killer.start()
            summary = executors.run(str(tmp_path), executor=cluster.scheduler_address)
            killer.join()
    assert len(summary["ran"]) == 16
    merged = campaign.merge(str(tmp_path))
    reference = campaign.merge(local_run)
    assert merged["toys"]["counted_per_mu"] == [NTOYS, NTOYS]
    assert merged["cls_obs"] == reference["cls_obs"] and merged["cls_exp"] == reference["cls_exp"]


def test_killed_job_resumes_from_its_checkpoint(docs, local_run, tmp_path):
    _plan(docs, tmp_path)
    job = str(tmp_path / "jobs" / "job-0001.json")
    stopped = campaign.run_job(job, checkpoint_every=1, stop_after_blocks=1)
    assert stopped["status"] == "stopped" and 0 < stopped["rows_done"] < 2 * PER_JOB
    assert os.path.exists(tmp_path / "results" / "job-0001.checkpoint.npz")
    assert not os.path.exists(tmp_path / "results" / "job-0001.npz")
    assert campaign.run_job(job)["status"] == "done"
    assert not os.path.exists(tmp_path / "results" / "job-0001.checkpoint.npz")
    mine = _arrays(str(tmp_path))["job-0001"]
    want = _arrays(local_run)["job-0001"]
    np.testing.assert_array_equal(mine[0], want[0])
    np.testing.assert_array_equal(mine[1], want[1])


def test_truncated_result_is_refused_then_redone(local_run, tmp_path):
    directory = str(tmp_path / "c")
    shutil.copytree(local_run, directory)
    victim = os.path.join(directory, "results", "job-0002.npz")
    with open(victim, "rb") as handle:
        payload = handle.read()
    with open(victim, "wb") as handle:
        handle.write(payload[: len(payload) // 2])
    with pytest.raises(campaign.CampaignError, match="job-0002.npz is truncated"):
        campaign.merge(directory)
    summary = executors.run(directory)
    assert [r["job"] for r in summary["ran"]] == ["job-0002"]
    _assert_same(_arrays(directory), _arrays(local_run))


def test_corrupt_result_fails_its_checksum(local_run, tmp_path):
    directory = str(tmp_path / "c")
    shutil.copytree(local_run, directory)
    path = os.path.join(directory, "results", "job-0000.npz")
    meta, sb, b, extra = read_result(path, extra=("teststat_obs",))
    sb[0, 0] += 1.0
    np.savez(path, teststat_sb=sb, teststat_b=b, meta=np.array(json.dumps(meta)), **extra)
    with pytest.raises(campaign.CampaignError, match="job-0000.npz fails its checksum"):
        campaign.merge(directory)


def test_duplicates_do_not_double_count(local_run, tmp_path):
    directory = str(tmp_path / "c")
    shutil.copytree(local_run, directory)
    shutil.copy(os.path.join(directory, "jobs", "job-0000.json"), os.path.join(directory, "jobs", "job-0000-copy.json"))
    shutil.copy(os.path.join(directory, "results", "job-0001.npz"), os.path.join(directory, "results", "job-0001-copy.npz"))
    assert executors.run(directory)["ran"] == []
    merged = campaign.merge(directory)
    assert merged["toys"]["counted_per_mu"] == [NTOYS, NTOYS]
    assert merged["toys"]["duplicates_ignored"] == [os.path.join(directory, "results", "job-0001.npz")] or \
        merged["toys"]["duplicates_ignored"] == [os.path.join(directory, "results", "job-0001-copy.npz")]
    assert merged["cls_obs"] == campaign.merge(local_run)["cls_obs"]


def test_foreign_and_missing_results(docs, local_run, tmp_path):
    other = tmp_path / "other"
    _plan(docs, other, seed=4)
    campaign.run_job(str(other / "jobs" / "job-0000.json"))
    directory = str(tmp_path / "c")
    shutil.copytree(local_run, directory)
    os.unlink(os.path.join(directory, "results", "job-0003.npz"))
    with pytest.raises(campaign.CampaignError, match=r"1 of 4 jobs have no result \(job-0003\)"):
        campaign.merge(directory)
    partial = campaign.merge(directory, allow_partial=True)
    assert partial["toys"]["partial"] and partial["toys"]["missing_jobs"] == ["job-0003"]
    assert partial["toys"]["counted_per_mu"] == [NTOYS, NTOYS - PER_JOB]
    shutil.copy(other / "results" / "job-0000.npz", os.path.join(directory, "results", "job-0003.npz"))
    with pytest.raises(campaign.CampaignError, match="job-0003.npz belongs to campaign"):
        campaign.merge(directory)


def test_cli_campaign_and_submit_scripts(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "camp")
    res = runner.invoke(main, ["campaign", "plan", "example:docs", "--mus", "0.5:1.5:2", "--ntoys", "32",
                               "--toys-per-job", "16", "--seed", "5", "--out", out, "--submit", "slurm", "--gpu",
                               "--chunk-size", "16", "--json"])
    assert res.exit_code == 0, res.output
    plan = strict_json(res.stdout)
    assert plan["n_jobs"] == 4
    script = open(plan["submit_script"]).read()
    assert "#SBATCH --array=0-3" in script and "--gres=gpu:1" in script and "campaign run-job" in script
    res = runner.invoke(main, ["campaign", "run-job", os.path.join(out, "jobs", "job-0000.json"), "--quiet"])
    assert res.exit_code == 0 and "job-0000: done" in res.output
    res = runner.invoke(main, ["campaign", "merge", out])
    assert res.exit_code == 2 and "3 of 4 jobs have no result" in res.output
    res = runner.invoke(main, ["campaign", "run", out, "--json"])
    assert res.exit_code == 0, res.output
    assert len(strict_json(res.stdout)["ran"]) == 3
    res = runner.invoke(main, ["campaign", "merge", out, "--json"])
    assert res.exit_code == 0, res.output
    merged = strict_json(res.stdout)
    assert merged["toys"]["counted_per_mu"] == [32, 32] and "observed" in merged
    for system, needle in (("htcondor", "request_gpus"), ("panda", "prun --containerImage")):
        target = str(tmp_path / system)
        res = runner.invoke(main, ["campaign", "plan", "example:docs", "--mus", "1", "--ntoys", "8",
                                   "--toys-per-job", "8", "--out", target, "--submit", system, "--gpu"])
        assert res.exit_code == 0, res.output
        text = open(glob.glob(os.path.join(target, "submit", f"{system}.*"))[0]).read()
        assert needle in text and "campaign run-job" in text
    res = runner.invoke(main, ["campaign", "plan", "example:docs", "--mus", "1", "--ntoys", "8",
                               "--toys-per-job", "8", "--out", out])
    assert res.exit_code == 2 and "already holds a campaign" in res.output


@pytest.mark.slow
def test_merge_gives_the_verdict_of_hypotest_on_failed_toys(monkeypatch, tmp_path):
    """The same toys get the same verdict: where every fit fails, hypotest raises
    ToyFitsFailed, and so does the merge of a campaign of those toys (max_failed as
    planned, hypotest's default); with max_failed=1 the merge answers, failures counted."""
    from conftest import broken_workspace

    ws = broken_workspace(monkeypatch)
    model = ws.model()
    with pytest.raises(gpufit.ToyFitsFailed, match="4 of 4 toys") as direct:
        gpufit.hypotest(model, ws.data(model), 1.0, calculator="toys", ntoys=2, seed=3, progress=False)
    campaign.plan(ws, str(tmp_path), [1.0], 2, 2, 3, chunk_size=16)
    executors.run(str(tmp_path), executor="local")
    with pytest.raises(gpufit.ToyFitsFailed, match="4 of 4 toys") as merged:
        campaign.merge(str(tmp_path))
    assert merged.value.result["n_failed"] == direct.value.result["n_failed"] == 4
    assert merged.value.max_failed == direct.value.max_failed == 0.01
    assert campaign.merge(str(tmp_path), max_failed=1.0)["n_failed"] == 4
