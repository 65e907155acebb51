"""Several walkers per stage on Dask: exact merging, a killed worker, the SLURM job script."""
import json
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from cvflow.config import ConfigError, config_from_dict
from cvflow.fes import CZARStats, read_fes
from conftest import ALA2_PDB, BETA_ES, ES_CONFIG, ROOT, es_exact_fx, linear_toy_cv, quick_es, rms_kT

pytest.importorskip("distributed")


def es_config(tmp_path, name, steps, **execution):
    d = yaml.safe_load(ES_CONFIG.read_text())
    d["md"].update(steps=steps, checkpoint_interval=50_000)
    d["execution"] = execution
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_two_walkers_merge_exactly_and_match_one_walker_of_twice_the_length(tmp_path):
    """Two walkers of 100k steps on ξ = x (Dask LocalCluster, 2 processes) against the exact
    F(x) and against one walker of 200k steps. Tolerance: one 100k-step walker measured
    0.15-0.17 kT RMS; 0.3 kT leaves room for the statistics of a different seed."""
    cv = linear_toy_cv(tmp_path / "x.pt", [[1.0, 0.0]])
    grid = "--grid=-2,2,40"
    two, one = tmp_path / "two", tmp_path / "one"
    res = CliRunner().invoke(main, ["sample", str(es_config(tmp_path, "two", 100_000, walkers=2, workers=2)),
                                    "--cv", str(cv), "--out", str(two), grid, "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["sample", str(es_config(tmp_path, "one", 200_000)),
                                    "--cv", str(cv), "--out", str(one), grid, "-q"])
    assert res.exit_code == 0, res.output
    seg = json.loads((two / "segment.json").read_text())
    assert [w["status"] for w in seg["walkers"]] == ["done", "done"] and seg["steps"] == 200_000
    # exact merge: the merged statistics are the sums of the walkers'
    parts = [CZARStats.load(two / "walkers" / f"w{k:02d}" / "czar.npz") for k in range(2)]
    merged = CZARStats.load(two / "czar.npz")
    assert np.array_equal(merged.count, parts[0].count + parts[1].count)
    assert np.allclose(merged.sum_coupling, parts[0].sum_coupling + parts[1].sum_coupling, rtol=0, atol=1e-9)
    lam = [CZARStats.load(two / "walkers" / f"w{k:02d}" / "lambda.npz") for k in range(2)]
    lam_merged = CZARStats.load(two / "lambda.npz")  # the λ statistics of the extended reweighting
    assert np.array_equal(lam_merged.count, lam[0].count + lam[1].count) and lam_merged.count.sum() > 0
    assert np.allclose(lam_merged.sum_coupling, lam[0].sum_coupling + lam[1].sum_coupling, rtol=0, atol=1e-9)
    from cvflow.dataset import stage_log_weights
    logw, info = stage_log_weights(two, BETA_ES)  # walkers' frames, one κ: reweighted together
    assert len(logw) == seg["frames"] and info["frames_without_free_energy"] <= 2
    assert len(np.load(two / "traj.npy")) == seg["frames"] == 2 * (100_000 // 50)
    c, f2, _ = read_fes(two / "fes.csv")
    _, f1, _ = read_fes(one / "fes.csv")
    exact = es_exact_fx(c[:, 0])
    err2, n2 = rms_kT(f2, exact, BETA_ES)
    err1, n1 = rms_kT(f1, exact, BETA_ES)
    between, _ = rms_kT(f2, f1, BETA_ES)
    print(f"2 walkers x 100k: {err2:.3f} kT RMS ({n2} bins); 1 walker x 200k: {err1:.3f} kT; "
          f"between them {between:.3f} kT")
    assert n2 >= 15 and err2 < 0.3
    assert err1 < 0.3 and between < 0.3


def _worker_processes():
    import psutil
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            out.append(p)
    return out


def test_a_killed_worker_is_retried_and_the_run_finishes(tmp_path):
    cfg = quick_es(tmp_path, tmp_path / "run", md={"steps": 1_000_000, "checkpoint_interval": 50_000},
                   convergence={"max_iterations": 1, "production_steps": 2_000})
    d = yaml.safe_load(cfg.read_text())
    d["execution"] = {"walkers": 2, "workers": 2}
    cfg.write_text(yaml.safe_dump(d))
    killed = []

    def killer():
        ckpt = tmp_path / "run" / "iter_000" / "md" / "walkers"
        t0 = time.time()
        while time.time() - t0 < 240:
            if any(ckpt.glob("w*/ckpt/progress.json")):
                busy = sorted(_worker_processes(), key=lambda p: p.cpu_times().user, reverse=True)
                if busy:
                    busy[0].kill()
                    killed.append(busy[0].pid)
                    return
            time.sleep(0.05)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    t.join(timeout=5)
    assert killed, "no worker process was found to kill"
    assert res.exit_code == 0, res.output
    seg = json.loads((tmp_path / "run" / "iter_000" / "md" / "segment.json").read_text())
    attempts = sorted(w["attempts"] for w in seg["walkers"])
    print(f"killed worker {killed[0]}; walkers: {seg['walkers']}")
    assert attempts == [1, 2] and all(w["status"] == "done" for w in seg["walkers"])
    assert seg["steps"] == 2_000_000
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["iterations"][0]["walkers_failed"] == []


def test_slurm_job_script_asks_for_what_the_config_says():
    pytest.importorskip("dask_jobqueue")
    from cvflow.walkers import jobqueue_cluster
    d = yaml.safe_load(ES_CONFIG.read_text())
    d["execution"] = {"walkers": 64, "backend": "slurm",
                      "cluster": {"queue": "gpu", "account": "proj42", "cores": 8, "memory": "32GB", "gpus": 1,
                                  "walltime": "12:00:00", "prologue": ["module load cuda/12.4"]}}
    cfg = config_from_dict(d)
    cluster = jobqueue_cluster(cfg)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=8", "#SBATCH -t 12:00:00",
                 "#SBATCH --gres=gpu:1", "module load cuda/12.4"):
        assert line in script, (line, script)
    assert "#SBATCH --mem=30G" in script or "#SBATCH --mem=" in script
    worker = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in worker and "--resources walker=1,GPU=1" in worker, worker


@pytest.mark.parametrize("execution, md_threads, env, cores, expected", [
    ({"walkers": 2}, None, None, 2, 1),            # 2 walkers on 2 cores: one thread each, not two
    ({"walkers": 2}, None, None, 16, 8),
    ({"walkers": 4, "workers": 3}, None, None, 16, 5),
    ({"walkers": 8}, None, None, 4, 1),            # more walkers than cores: 4 workers, 1 thread each
    ({"walkers": 2}, 3, None, 16, 3),              # the user's md.threads wins
    ({"walkers": 2}, None, "6", 16, None),         # so does OPENMM_CPU_THREADS (OpenMM reads it)
    ({"walkers": 2, "backend": "slurm", "cluster": {"cores": 8}}, None, None, 64, 8),  # the job's cores
    ({"walkers": 2, "backend": "dask", "scheduler": "tcp://h:8786"}, None, None, 16, None),
])
def test_walkers_split_the_cores_between_them(monkeypatch, execution, md_threads, env, cores, expected):
    """Each walker's md.threads (OpenMM's CPU platform would give each walker every core of
    the machine, and walkers side by side would oversubscribe it)."""
    from cvflow import walkers
    monkeypatch.setattr(walkers, "usable_cores", lambda: cores)
    if env is None:
        monkeypatch.delenv("OPENMM_CPU_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENMM_CPU_THREADS", env)
    d = yaml.safe_load(ES_CONFIG.read_text())
    d["md"]["threads"] = md_threads
    d["execution"] = execution
    assert walkers.walker_md_threads(config_from_dict(d)) == expected


@pytest.mark.parametrize("pin", [False, True])
def test_walkers_on_the_cpu_platform_record_the_threads_they_ran_on(tmp_path, monkeypatch, pin):
    """Two unbiased walkers of alanine dipeptide in implicit solvent (OpenMM's CPU platform)
    run on the cores split between them, and each walker's entry in segment.json says so;
    with md.pin, each worker's walker on cores of its own."""
    import os
    from cvflow.system import build_system
    from cvflow.walkers import run_walkers
    monkeypatch.delenv("OPENMM_CPU_THREADS", raising=False)
    d = yaml.safe_load((ROOT / "configs" / "ala2-implicit.yaml").read_text())
    d["system"]["pdb"] = str(ALA2_PDB)
    d["md"].update(steps=200, report_interval=50, checkpoint_interval=200, platform="CPU", pin=pin)
    d["execution"] = {"walkers": 2}
    cfg = config_from_dict(d)
    run_walkers(cfg, build_system(cfg.system, cfg.features.atoms), tmp_path / "md", 200, 5, engine="none")
    seg = json.loads((tmp_path / "md" / "segment.json").read_text())
    cores = sorted(os.sched_getaffinity(0))
    want = max(1, len(cores) // min(2, len(cores)))
    assert [w["md_threads"] for w in seg["walkers"]] == [want, want], seg["walkers"]
    got = [w["md_cores"] for w in seg["walkers"]]
    if not pin:
        assert got == [None, None]
    else:  # worker 0 from the first core, worker 1 after it (which walker ran where is Dask's choice)
        assert sorted(got) == sorted([cores[(k * want + i) % len(cores)] for i in range(want)] for k in range(2)), got
    assert seg["platform"] == "CPU" and seg["frames"] == 2 * 4  # frames at steps 50, 100, 150, 200


@pytest.mark.parametrize("execution, bias, needle", [
    ({"walkers": 2, "backend": "dask"}, {}, "scheduler"),
    ({"walkers": 2, "min_walkers": 3}, {}, "min_walkers (3) is more than walkers (2)"),
    ({"walkers": 2}, {"engine": "plumed"}, "needs bias.engine: native"),
])
def test_execution_errors_name_the_key(execution, bias, needle):
    d = yaml.safe_load(ES_CONFIG.read_text())
    d["execution"] = execution
    d["bias"].update(bias)
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    assert needle in str(e.value) and "execution" in str(e.value)
