"""cvflow run: the loop end to end, its run directory, resume, and the science on the toy."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ES_CONFIG, es_loop_checks, es_y_start_run, quick_es, stop_then_resume, write_es_config


def test_run_directory_and_summary(es_run):
    cfg, run = es_run
    s = json.loads((run / "summary.json").read_text())
    assert set(s) >= {"converged", "iterations", "final_cv", "final_fes"}
    for it in s["iterations"]:
        assert set(it) >= {"index", "regscore", "threshold", "cv", "fes", "frames", "steps", "wall_seconds"}
        d = run / f"iter_{it['index']:03d}"
        for f in ("cv.pt", "weights.npy", "training.csv", "metrics.json", "md/colvar.csv" if it["index"] else "md/traj.npy"):
            assert (d / f).exists(), f
    assert (run / s["final_cv"]).exists() and (run / s["final_fes"]).exists()
    # the reweighted histogram of the production's ξ: on the production's grid, its frames all counted
    from cvflow.fes import read_fes
    c_czar, _, _ = read_fes(run / s["final_fes"])
    c_hist, f_hist, count = read_fes(run / s["final_fes_reweighted"])
    assert np.allclose(c_hist, c_czar) and np.nanmin(f_hist) == 0.0
    assert count.sum() == len(np.load(run / "production" / "weights.npy"))
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert set(resolved["versions"]) >= {"cvflow", "openmm", "torch", "numpy", "plumed"}
    assert resolved["engine"] == "native" and "iter_000" in resolved["seeds"]
    # weights: normalised, float64, from exp(−βF)
    w = np.load(run / "iter_001" / "weights.npy")
    assert w.dtype == np.float64 and w.sum() == pytest.approx(1.0)
    # a second run into the same directory is refused; --resume is a no-op that keeps the summary
    again = CliRunner().invoke(main, ["run", str(cfg)])
    assert again.exit_code == 2 and "not empty" in again.output
    resumed = CliRunner().invoke(main, ["run", str(cfg), "--resume", "-q"])
    assert resumed.exit_code == 0
    assert json.loads((run / "summary.json").read_text())["iterations"] == s["iterations"]


def test_resume_refuses_changed_config(tmp_path):
    cfg = quick_es(tmp_path, tmp_path / "run", convergence={"max_iterations": 1})
    assert CliRunner().invoke(main, ["run", str(cfg), "-q"]).exit_code == 0
    changed = quick_es(tmp_path, tmp_path / "run", convergence={"max_iterations": 1}, bias={"fullsamples": 50})
    res = CliRunner().invoke(main, ["run", str(changed), "--resume"])
    assert res.exit_code == 2 and "bias.fullsamples" in res.output
    # where and on how many cores the MD runs may change (md.threads, md.pin, md.pin_offset)
    moved = quick_es(tmp_path, tmp_path / "run", convergence={"max_iterations": 1},
                     md={"threads": 1, "pin": True, "pin_offset": 1})
    res = CliRunner().invoke(main, ["run", str(moved), "--resume", "-q"])
    assert res.exit_code == 0, res.output
    # a record from an older cvflow, without a key added since (at its default): no change
    resolved = tmp_path / "run" / "config.resolved.yaml"
    rec = yaml.safe_load(resolved.read_text())
    del rec["config"]["model"]["restarts"]
    resolved.write_text(yaml.safe_dump(rec))
    cfg = quick_es(tmp_path, tmp_path / "run", convergence={"max_iterations": 1})  # the first config again
    res = CliRunner().invoke(main, ["run", str(cfg), "--resume", "-q"])
    assert res.exit_code == 0, res.output
    # a recorded key that today's schema does not know is a difference
    rec["config"]["bias"]["retired_key"] = 1
    resolved.write_text(yaml.safe_dump(rec))
    res = CliRunner().invoke(main, ["run", str(cfg), "--resume"])
    assert res.exit_code == 2 and "bias.retired_key" in res.output


def _wait_for(path_fn, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path_fn():
            return True
        time.sleep(0.05)
    return False


def _summary_core(run):
    s = json.loads((run / "summary.json").read_text())
    return [(it["index"], it["regscore"], it["threshold"], it["frames"]) for it in s["iterations"]], s["final_cv"]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL during MD (inside a segment, after a checkpoint) and during training; then
    --resume. The summary and the final CV equal those of an uninterrupted run."""
    ref_cfg = quick_es(tmp_path, tmp_path / "ref")
    assert CliRunner().invoke(main, ["run", str(ref_cfg), "-q"]).exit_code == 0
    cfg = quick_es(tmp_path, tmp_path / "killed")
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start(*extra):
        return subprocess.Popen([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "-q", *extra],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def manifest():
        try:
            return json.loads((run / "manifest.json").read_text())
        except Exception:
            return {"stages": {}}
    # 1: kill inside iteration 1's MD, after its first checkpoint
    p = start()
    assert _wait_for(lambda: (run / "iter_001" / "md" / "ckpt" / "progress.json").exists())
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "iter_001" / "md" / "segment.json").exists()
    # 2: resume, kill during iteration 2's training
    p = start("--resume")
    assert _wait_for(lambda: manifest().get("current") == "iter_002/train")
    p.send_signal(signal.SIGKILL)
    p.wait()
    # 3: resume to the end
    p = start("--resume")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out.decode()[-2000:]
    assert _summary_core(run) == _summary_core(tmp_path / "ref")
    a = torch.jit.load(str(run / _summary_core(run)[1]))
    b = torch.jit.load(str(tmp_path / "ref" / _summary_core(run)[1]))
    x = torch.randn(50, 1, 3, dtype=torch.float64)
    assert torch.equal(a(x), b(x))


def test_sigterm_checkpoints_and_resumes_the_same_trajectory(tmp_path, x_cv):
    """SIGTERM during `cvflow sample` writes a checkpoint and exits; --resume continues to
    the same frames and free energy as an uninterrupted run."""
    ref = tmp_path / "ref"
    args = ["sample", str(ES_CONFIG), "--cv", str(x_cv), "--steps", "60000", "--grid=-2,2,40", "-q"]
    assert CliRunner().invoke(main, args + ["--out", str(ref)]).exit_code == 0
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "cvflow.cli"] + args + ["--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert _wait_for(lambda: any((out / "chunks").glob("frames_*.npy")) if (out / "chunks").exists() else False)
    p.send_signal(signal.SIGTERM)
    text, _ = p.communicate(timeout=120)
    assert p.returncode == 143, text.decode()
    assert (out / "ckpt" / "progress.json").exists() and not (out / "segment.json").exists()
    p = subprocess.run(cmd + ["--resume"], capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    assert np.array_equal(np.load(out / "traj.npy"), np.load(ref / "traj.npy"))
    assert (out / "fes.csv").read_text() == (ref / "fes.csv").read_text()


def _es_run(tmp_path, name, **over):
    cfg = write_es_config(tmp_path / f"{name}.yaml", tmp_path / name, over)
    t0 = time.time()
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    r = es_loop_checks(tmp_path / name)
    print(f"{name}: {time.time() - t0:.0f} s; {r}")
    return r


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
def test_entropic_switch_loop_finds_x(tmp_path, stride):
    """The shipped config: converges within 8 iterations; the final CV separates the two
    wells, is monotonic in x where F ≤ 5 kT, and the production free energy along it
    matches the exact one within 0.5 kT RMS where F ≤ 5 kT. Measured (seed 2024, with the
    bootstrap floor): 4 iterations, regscores 0.14, 0.034, 0.997 against thresholds 0.5
    (floor), 0.5 (floor), 0.867; R² 0.9999 with x; RMS 0.054 kT over 26 bins. The same with
    ``bias.stride: 2`` (the bias every other step with twice its force): 7 iterations, the
    last regscore 0.997 against 0.978; R² 0.9999 with x; RMS 0.073 kT over 28 bins."""
    r = _es_run(tmp_path, f"es{stride}", bias={"stride": stride})
    assert r["converged"] and r["iterations"] <= 8
    assert r["separation"] > 0.5 and r["monotonic_in_x"]
    assert r["fes_bins"] >= 10 and r["fes_rms_kT"] < 0.5


@pytest.mark.slow
def test_reweighting_matters_from_a_run_biased_along_y(tmp_path, y_cv):
    """Iteration 0 is eABF along y (the wrong CV); six seeds, with and without weights, two
    runs at a time with one thread each (about 6 minutes).

    With reweighting, every run must find x: converged, monotonic in x where F ≤ 5 kT,
    Boltzmann-weighted R² with x above 0.98, and the production free energy within 0.5 kT
    of the exact one. Without (model.reweight: false), the autoencoder learns from the
    flattened distribution of the previous CV: first y or the arc from one well up through
    the upper channel to the other, then an arc that folds back over x; the loop settles
    there. Measured with scripts/reweighting_sweep.py (docs/measurements/
    reweighting-sweep-cpu-vm.json), seeds 1–10 and 2024: reweighted 11 of 11 find x (R²
    0.982–0.9999); unweighted 10 of 11 converge to a CV that is not monotonic in x (R²
    0.945–0.969), and one (seed 2024) finds x (R² 0.994). Seeds 1–6 here all gave the
    non-monotonic CV; the test allows one of six to find x, as seed 2024 did, so that a
    change of numerics that moves one run does not fail it. The median unweighted R² must
    stay below the lowest reweighted one."""
    jobs = [(seed, rw) for seed in range(1, 7) for rw in (True, False)]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda j: es_y_start_run(j[0], j[1], y_cv, tmp_path), jobs))
    for r in runs:
        print(r["name"], {k: r[k] for k in ("converged", "iterations", "r2_x", "monotonic_in_x", "fes_rms_kT")},
              [p["r2_x"] for p in r["per_iteration"]])
    good = [r for r in runs if r["reweight"]]
    bad = [r for r in runs if not r["reweight"]]
    for g in good:
        assert g["finds_x"] and g["fes_rms_kT"] < 0.5, g
    assert sum(not b["monotonic_in_x"] for b in bad) >= 5
    assert np.median([b["r2_x"] for b in bad]) < min(g["r2_x"] for g in good)


def test_bootstrap_workers_give_the_serial_result(tmp_path, es_run):
    """`convergence.bootstrap.workers: 2` trains the bootstrap networks in two spawned
    processes; the run reaches the same regscores and thresholds as the serial run."""
    cfg = quick_es(tmp_path, tmp_path / "par", convergence={"bootstrap": {"repeats": 2, "workers": 2}})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    serial = json.loads((es_run[1] / "summary.json").read_text())["iterations"]
    parallel = json.loads((tmp_path / "par" / "summary.json").read_text())["iterations"]
    assert [(i["regscore"], i["threshold"]) for i in parallel] == [(i["regscore"], i["threshold"]) for i in serial]
    assert len(serial) >= 2 and serial[1]["threshold"] is not None


def test_bootstrap_threshold_has_a_floor(tmp_path):
    """`convergence.bootstrap.min_threshold`: a bootstrap quantile below it is raised to it,
    with the raw quantile and a flag kept in metrics.json and shown by `cvflow status`. With
    the floor at 1, no regscore passes, so the run must not converge."""
    cfg = quick_es(tmp_path, tmp_path / "floor", convergence={"bootstrap": {"repeats": 2, "min_threshold": 1.0}})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "floor"
    s = json.loads((run / "summary.json").read_text())
    assert not s["converged"] and len(s["iterations"]) == 3
    for i in (1, 2):
        m = json.loads((run / f"iter_{i:03d}" / "metrics.json").read_text())
        assert m["threshold"] == 1.0 and m["threshold_floored"] and not m["converged"]
        assert m["bootstrap_quantile"] < 1.0 and m["regscore"] < 1.0
        assert np.isclose(m["bootstrap_quantile"], np.quantile(m["bootstrap_scores"], 0.05))
    from cvflow.report import load_run, status_table
    rec = load_run(run)
    assert [r.quantile_below_floor is not None for r in rec.iterations] == [False, True, True]
    from rich.console import Console
    con = Console(width=200, record=True)
    con.print(status_table(rec))
    assert con.export_text().count("1.0000 (floor)") == 2


def test_sigterm_stops_training_promptly(tmp_path):
    """SIGTERM during training stops the run within seconds, with status 143, before the
    next stage starts, and no traceback."""
    run = tmp_path / "run"
    cfg = write_es_config(tmp_path / "c.yaml", run,
                          {"md": {"steps": 2000, "report_interval": 20, "checkpoint_interval": 1000}},
                          {"model": {"epochs": 100_000, "patience": 100_000, "threads": 1}},
                          {"convergence": {"max_iterations": 2, "production_steps": 1000}})
    p = subprocess.Popen([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def current():
        try:
            return json.loads((run / "manifest.json").read_text()).get("current")
        except Exception:
            return None
    assert _wait_for(lambda: current() == "iter_000/train")
    time.sleep(1.5)  # well inside training
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    waited = time.time() - t0
    text = out.decode()
    assert p.returncode == 143, text[-2000:]
    assert waited < 10, f"took {waited:.1f} s to stop"
    assert "Traceback" not in text and "resume with --resume" in text and "epoch" in text
    assert current() == "iter_000/train"  # the next stage did not start


def _slow_member(seconds):
    time.sleep(seconds)
    return seconds


def test_the_bootstrap_pool_stops_promptly():
    """A stop request during the bootstrap's worker processes raises StopRequested within a
    second and kills the workers (they would otherwise train on for minutes)."""
    import threading
    from cvflow.stop import StopRequested, _STOP, reset
    from cvflow.train import process_map
    t0 = time.time()
    threading.Timer(1.0, lambda: _STOP.update(flag=True, signal="SIGTERM")).start()
    try:
        with pytest.raises(StopRequested, match="network 1 of 2"):
            with process_map(2, label="test bootstrap") as pmap:
                list(pmap(_slow_member, [60, 60]))
    finally:
        reset()
    assert time.time() - t0 < 10


def test_thread_counts_do_not_change_the_numbers(tmp_path, es_run):
    """Issue 22 (B2): the same config, seed and versions give the same numbers whatever the
    thread settings. This run uses one thread everywhere (OMP/MKL/NUMBA_NUM_THREADS=1,
    model.threads: 1) in a fresh process; the shared run used torch's default (one per
    core). Regscores and thresholds agree to the bit, and config.resolved.yaml records the
    thread settings and library versions of each run."""
    import os
    import subprocess
    import sys
    import yaml
    cfg = quick_es(tmp_path, tmp_path / "one", model={"threads": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "-q"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    base = json.loads((es_run[1] / "summary.json").read_text())["iterations"]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["iterations"]
    key = [(i["regscore"], i["threshold"], i["ess"]) for i in base]
    assert [(i["regscore"], i["threshold"], i["ess"]) for i in one] == key
    rec = yaml.safe_load((tmp_path / "one" / "config.resolved.yaml").read_text())
    assert rec["execution"]["torch_threads"] == 1 and rec["execution"]["env"]["OMP_NUM_THREADS"] == "1"
    for lib in ("numba", "scipy", "mdtraj", "openmm", "torch", "numpy"):
        assert rec["versions"][lib]


def test_a_run_reruns_from_its_config_resolved_yaml(tmp_path, es_run):
    """A run directory's config.resolved.yaml is itself a config: run again from it (into
    another directory), it gives the same numbers; a change of library version since is named."""
    import yaml
    from click.testing import CliRunner
    from cvflow.cli import main
    from cvflow.workflow import recorded_version_changes
    resolved = es_run[1] / "config.resolved.yaml"
    assert recorded_version_changes(resolved) == []
    res = CliRunner().invoke(main, ["run", str(resolved), "--out", str(tmp_path / "again"), "-q"])
    assert res.exit_code == 0, res.output
    base = json.loads((es_run[1] / "summary.json").read_text())["iterations"]
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["iterations"]
    assert [(i["regscore"], i["threshold"]) for i in again] == [(i["regscore"], i["threshold"]) for i in base]
    old = yaml.safe_load(resolved.read_text())
    old["versions"]["torch"] = "0.0.1"
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    changed = recorded_version_changes(tmp_path / "old.yaml")
    assert len(changed) == 1 and changed[0].startswith("torch 0.0.1 → ")


def test_frozen_production_stage(tmp_path):
    """convergence.production_frozen_steps: after the production's eABF, a stage under its
    frozen bias; the run's production frames, weights and final free energy are that
    stage's, and its weights are the exact e^{β[B(λ) + W(λ)]} of the frozen bias."""
    from cvflow.dataset import normalised_weights
    from cvflow.bias.native import static_bias_energies
    from cvflow.units import kT
    from cvflow.workflow import production_md_dir
    cfg = quick_es(tmp_path, tmp_path / "run", convergence={"max_iterations": 2, "production_frozen_steps": 10_000})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    s = json.loads((run / "summary.json").read_text())
    frozen = run / "production" / "frozen"
    assert production_md_dir(run) == frozen and s["final_fes"] == "production/frozen/fes.csv"
    assert s["production"]["frozen"]["steps"] == 10_000 and (run / "production" / "md" / "bias_state.npz").exists()
    # the fill as set (the default 20 kT), as applied, and where λ's weighted basins joined
    levels = np.load(frozen / "frozen_bias.npz")["levels"]
    assert levels.shape == (1, 3) and np.isfinite(levels).all()
    fz = s["production"]["frozen"]
    assert fz["fill_kT"] == pytest.approx(20.0) and fz["fill_applied_kT"] >= 20.0
    assert fz["basins_join_kT"] == pytest.approx(levels[0, 1] / kT(30.0694))
    assert fz["fill_applied_kT"] == pytest.approx(max(20.0, fz["basins_join_kT"] + 1.0))
    w = np.load(run / "production" / "weights.npy")
    n = len(np.load(frozen / "traj.npy"))
    assert len(w) == n == 10_000 // 50
    rec = np.load(frozen / "frozen_bias.npz")
    lam = np.loadtxt(frozen / "colvar.csv", delimiter=",", comments="#", skiprows=2)[:, 3:4]
    beta = 1.0 / kT(30.0694)  # the shipped config's temperature (β ≈ 4 mol/kJ)
    expect = normalised_weights(beta * static_bias_energies(lam, rec["potential"], rec["mins"], rec["widths"],
                                                            rec["bins"], rec["periods"], float(rec["wall_kappa"])))
    assert np.allclose(w, expect, rtol=1e-10, atol=0)
    # λ goes on from the eABF stage: the frozen stage starts where it ended
    adaptive_end = np.load(run / "production" / "md" / "bias_state.npz")["lam"]
    assert abs(lam[0, 0] - adaptive_end[0]) < 0.5
    # the report lists the frozen stage beside the eABF one and names its weights as exact
    from cvflow.report import load_run, production_rows, production_weights
    rec = load_run(run)
    assert [(label, frames) for label, frames, _ in production_rows(rec)] == [
        ("production", len(np.load(run / "production" / "md" / "traj.npy"))), ("frozen bias", n)]
    assert production_weights(rec) == "frozen"
    assert CliRunner().invoke(main, ["report", str(run), "-q"]).exit_code == 0
    assert f"<td>frozen bias</td><td>{n}</td>" in (run / "report" / "report.html").read_text()


def _frozen_segment_setup(tmp_path, es_config, x_cv):
    """The entropic switch with checkpoints every 2,000 steps, an eABF segment of 5,000 steps
    on ξ = x in ``tmp_path/a``, and run_segment's keywords to go on from it with its bias
    frozen: (config, system, keywords)."""
    import cvflow.sampler as sampler
    from cvflow.config import GridDim
    from cvflow.fes import Grid
    from cvflow.system import build_system
    cfg = es_config.model_copy(deep=True)
    cfg.md.checkpoint_interval = 2_000
    bundle = build_system(cfg.system)
    grid = Grid.from_dims([GridDim(min=-2.0, max=2.0, bins=50)])
    sampler.run_segment(cfg, bundle, tmp_path / "a", 5_000, seed=3, cv_path=x_cv, grid=grid)
    kw = dict(cv_path=x_cv, grid=grid, start_positions=sampler.last_positions(tmp_path / "a", bundle),
              bias_start=tmp_path / "a" / "bias_state.npz", freeze=True)
    return cfg, bundle, kw


def test_frozen_segment_resumes_bit_for_bit(tmp_path, es_config, x_cv, monkeypatch):
    """A frozen segment stopped after its first checkpoint and resumed gives the frames and
    λ of an uninterrupted one: the checkpoint keeps the frozen bias."""
    import cvflow.sampler as sampler
    cfg, bundle, kw = _frozen_segment_setup(tmp_path, es_config, x_cv)
    sampler.run_segment(cfg, bundle, tmp_path / "ref", 6_000, seed=4, **kw)
    # stopped past the first checkpoint (step 2,000; frames every 50 steps), then resumed
    stop_then_resume(monkeypatch, lambda: sampler.run_segment(cfg, bundle, tmp_path / "b", 6_000, seed=4, **kw), 50)
    assert np.array_equal(np.load(tmp_path / "b" / "traj.npy"), np.load(tmp_path / "ref" / "traj.npy"))
    assert (tmp_path / "b" / "colvar.csv").read_text() == (tmp_path / "ref" / "colvar.csv").read_text()
    # frozen again every 1,000 steps: stopped at step 2,000, where it freezes again once
    # resumed, it ends as an uninterrupted one, with the same biases
    sampler.run_segment(cfg, bundle, tmp_path / "ref2", 6_000, seed=4, refreeze_every=1_000, **kw)
    stop_then_resume(monkeypatch, lambda: sampler.run_segment(cfg, bundle, tmp_path / "c", 6_000, seed=4,
                                                               refreeze_every=1_000, **kw), 40)
    assert np.array_equal(np.load(tmp_path / "c" / "traj.npy"), np.load(tmp_path / "ref2" / "traj.npy"))
    assert (tmp_path / "c" / "colvar.csv").read_text() == (tmp_path / "ref2" / "colvar.csv").read_text()
    a, b = np.load(tmp_path / "c" / "frozen_bias.npz"), np.load(tmp_path / "ref2" / "frozen_bias.npz")
    assert a["starts"].tolist() == b["starts"].tolist() == [0, 1_000, 2_000, 3_000, 4_000, 5_000]
    assert np.array_equal(a["potentials"], b["potentials"])
    assert not np.array_equal(b["potentials"][0], b["potentials"][-1])  # the statistics moved it
    # each freeze's levels (cut, joining level, fill as applied) survive the checkpoint too
    assert a["levels"].shape == (6, 3) and np.isfinite(a["levels"]).all()
    assert np.array_equal(a["levels"], b["levels"])


def test_an_extended_segment_is_the_longer_segment_and_resumes_into_its_extension(tmp_path, es_config, x_cv,
                                                                                   monkeypatch):
    """run_segment's ``extend``: a segment that its callback extends twice (5,000 → 7,000 →
    9,000 steps) gives the frames and colvar of a segment run 9,000 steps from the start,
    records the decisions in segment.json, and one stopped after its first extension and
    resumed ends the same: the resume runs to the extended length."""
    import cvflow.sampler as sampler
    cfg, bundle, kw = _frozen_segment_setup(tmp_path, es_config, x_cv)
    seen, weights = [], []

    def extend(frames, steps, logw):
        seen.append((len(frames), steps))
        weights.append(logw)
        return (steps + 2_000, f"more after {steps}") if steps < 9_000 else (steps, None)
    sampler.run_segment(cfg, bundle, tmp_path / "ref", 9_000, seed=4, **kw)
    res = sampler.run_segment(cfg, bundle, tmp_path / "ext", 5_000, seed=4, extend=extend, **kw)
    # the callback sees every frame so far (one per 50 steps, from step 0) at each end, and
    # their exact weights under the frozen bias: those of the finished segment's frames
    assert seen == [(100, 5_000), (140, 7_000), (180, 9_000)]
    from cvflow.dataset import stage_log_weights
    from cvflow.units import kT
    final, _ = stage_log_weights(tmp_path / "ext", 1.0 / kT(cfg.md.temperature))
    for (n, _), logw in zip(seen, weights):
        assert logw.shape == (n,) and np.allclose(logw - logw.max(), final[:n] - final[:n].max(), atol=1e-9)
    assert res.steps == 9_000 and res.frames == 180
    for name in ("traj.npy", "frame_steps.npy"):
        assert np.array_equal(np.load(tmp_path / "ext" / name), np.load(tmp_path / "ref" / name))
    assert (tmp_path / "ext" / "colvar.csv").read_text() == (tmp_path / "ref" / "colvar.csv").read_text()
    ext = json.loads((tmp_path / "ext" / "segment.json").read_text())["extension"]
    assert ext["from_steps"] == 5_000 and ext["steps"] == 9_000
    assert [(c["steps"], c["to"]) for c in ext["checks"]] == [(5_000, 7_000), (7_000, 9_000)]
    # stopped after the first extension (step 6,000 is past it), then resumed with the
    # original length: extension.json carries it to 9,000
    seen.clear()
    stop_then_resume(monkeypatch, lambda: sampler.run_segment(cfg, bundle, tmp_path / "b", 5_000, seed=4,
                                                               extend=extend, **kw), 120)
    assert (tmp_path / "b" / "colvar.csv").read_text() == (tmp_path / "ref" / "colvar.csv").read_text()
    assert np.array_equal(np.load(tmp_path / "b" / "traj.npy"), np.load(tmp_path / "ref" / "traj.npy"))
    assert json.loads((tmp_path / "b" / "segment.json").read_text())["extension"] == ext


def test_frozen_stage_on_a_run_without_a_bias_state_is_one_line(tmp_path, es_run):
    """Adding production_frozen_steps on --resume to a run whose production kept no
    bias_state.npz (an older cvflow's) is refused in one line, exit 2, no traceback."""
    import shutil
    _, run = es_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "production" / "md" / "bias_state.npz").unlink()
    cfg = quick_es(tmp_path, copy, convergence={"production_frozen_steps": 1000})
    res = CliRunner().invoke(main, ["run", str(cfg), "--resume", "-q"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.strip().splitlines() if "error" in line]
    assert len(errors) == 1 and "bias_state.npz" in errors[0], res.output
