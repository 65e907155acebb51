"""Shared fixtures: tiny systems, exact free energies of the entropic switch, CV files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_checks import exact_along, reweighted_fes_rms, rms_kT  # noqa: F401  (rms_kT: imported by the tests from here)
from toy_checks import toy_cv as toy_cv_fn

ROOT = Path(__file__).resolve().parents[1]
ES_CONFIG = ROOT / "configs" / "entropic-switch.yaml"
ALA2_PDB = ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb"
BETA_ES = 4.0  # mol/kJ

# `bias.engine: auto` picks PLUMED when PLUMED_KERNEL names a kernel. Only the tests
# marked `plumed` see it (through the `plumed_kernel` fixture), so that the rest of the
# suite runs the same engine everywhere.
_PLUMED_KERNEL = os.environ.pop("PLUMED_KERNEL", None)


@pytest.fixture
def fixed_rng():
    """A numpy generator with a fixed seed; every test that draws numbers takes it."""
    return np.random.default_rng(7)


@pytest.fixture
def plumed_kernel(monkeypatch):
    """The PLUMED kernel (PLUMED_KERNEL, restored for this test); skip with the reason if unusable."""
    if not _PLUMED_KERNEL:
        pytest.skip("no PLUMED kernel: PLUMED_KERNEL is not set (build one with scripts/install-plumed.sh)")
    monkeypatch.setenv("PLUMED_KERNEL", _PLUMED_KERNEL)
    from cvflow.bias.plumed import plumed_status
    st = plumed_status()
    if not st.usable:
        pytest.skip(f"PLUMED kernel not usable: {st.reason}")
    return _PLUMED_KERNEL


def es_potential(x, y):
    """The entropic switch, kJ/mol (x, y in nm)."""
    return (3 * np.exp(-x**2) * (np.exp(-(y - 1 / 3) ** 2) - np.exp(-(y - 5 / 3) ** 2))
            - 5 * np.exp(-y**2) * (np.exp(-(x - 1) ** 2) + np.exp(-(x + 1) ** 2))
            + 0.2 * x**4 + 0.2 * (y - 1 / 3) ** 4)


def es_exact_fx(xc, beta=BETA_ES):
    """Exact F(x) = −kT ln ∫ exp(−βV(x, y)) dy at ``xc``, minimum 0, kJ/mol."""
    ys = np.linspace(-3.0, 4.5, 6001)
    f = np.array([-np.log(np.trapezoid(np.exp(-beta * es_potential(x, ys)), ys)) / beta for x in xc])
    return f - f.min()


def es_exact_along(cv_fn, edges, beta=BETA_ES, n=801):
    """Exact F along any CV: Boltzmann-weighted histogram of ξ(x, y) over a fine grid."""
    return exact_along(es_potential, (-2.6, 2.6, -2.0, 3.5), cv_fn, edges, beta, n)


class _X(torch.nn.Module):
    def forward(self, pos):
        return pos[0, 0:1]


@pytest.fixture(scope="session")
def x_cv(tmp_path_factory) -> Path:
    """The TorchScript CV ξ = x (returns pos[0, 0:1])."""
    p = tmp_path_factory.mktemp("cv") / "x.pt"
    torch.jit.script(_X()).save(str(p))
    return p


def linear_toy_cv(path: Path, rows) -> Path:
    """A cvflow-format CV ξ = W (x, y) (identity activation): exercises the numba path."""
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures
    from cvflow.models.autoencoder import MLP
    rows = np.asarray(rows, float)
    enc = MLP([2, rows.shape[0]], ["identity"])
    with torch.no_grad():
        enc.net[0].weight.copy_(torch.as_tensor(rows))
        enc.net[0].bias.zero_()
    feats = AlignedFeatures([0], np.zeros((1, 3)), align=False, components=[0, 1])
    export_cv(feats, np.zeros(2), np.ones(2), enc, 1, path)
    return path


@pytest.fixture(scope="session")
def y_cv(tmp_path_factory) -> Path:
    """ξ = y of the toy particle, as a cvflow-format (numba) CV."""
    return linear_toy_cv(tmp_path_factory.mktemp("cv") / "y.pt", [[0.0, 1.0]])


@pytest.fixture(scope="session")
def es_config():
    from cvflow.config import load_config
    return load_config(ES_CONFIG)


@pytest.fixture(scope="session")
def ala2_bundle():
    from cvflow.config import SystemConfig
    from cvflow.system import build_system
    return build_system(SystemConfig(pdb=ALA2_PDB), "backbone")


def random_neural_cv(path: Path, bundle, atoms_sel=None, seed=0, hidden=40, dim=2, last="tanh") -> Path:
    """A random aligned-MLP CV on the heavy atoms of alanine dipeptide, exported by cvflow."""
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures
    from cvflow.models.autoencoder import MLP
    torch.manual_seed(seed)
    idx = bundle.feature_atoms if atoms_sel is None else atoms_sel
    feats = AlignedFeatures(idx, bundle.positions[idx], align=True)
    n = 3 * len(idx)
    enc = MLP([n, hidden, dim], ["tanh", last])
    rng = np.random.default_rng(seed)
    export_cv(feats, rng.normal(size=n) * 0.01, np.full(n, 0.05), enc, bundle.n_atoms, path)
    return path


def build_ala2():
    from cvflow.config import SystemConfig
    from cvflow.system import build_system
    return build_system(SystemConfig(pdb=ALA2_PDB), "backbone")


def write_es_config(path: Path, out: Path, *overrides: dict) -> Path:
    """The shipped entropic-switch config with `overrides` applied in order (a dict updates
    its section, anything else replaces it) and output `out`, written to `path`."""
    import yaml
    d = yaml.safe_load(ES_CONFIG.read_text())
    for over in overrides:
        for sec, vals in over.items():
            if isinstance(vals, dict):
                d.setdefault(sec, {}).update(vals)
            else:
                d[sec] = vals
    d["output"] = str(out)
    path.write_text(yaml.safe_dump(d))
    return path


QUICK_ES = {"md": {"steps": 20_000, "report_interval": 50, "checkpoint_interval": 5_000},
            "model": {"epochs": 40, "patience": 10, "threads": 1},
            "convergence": {"max_iterations": 3, "production_steps": 20_000, "bootstrap": {"repeats": 2}}}


def quick_es(tmp_path, out, **over):
    """A short entropic-switch loop config (about 20 s): writes it under tmp_path."""
    return write_es_config(tmp_path / f"{out.name}.yaml", out, QUICK_ES, over)


@pytest.fixture(scope="session")
def es_run(tmp_path_factory):
    """One finished quick entropic-switch run (about 20 s), shared by the tests that only read it."""
    from click.testing import CliRunner
    from cvflow.cli import main
    tmp = tmp_path_factory.mktemp("es_run")
    cfg = quick_es(tmp, tmp / "run")
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    return cfg, tmp / "run"


@pytest.fixture(scope="session")
def ala2_run(tmp_path_factory):
    """One finished run of configs/ala2-quick.yaml (a minute or two): (run directory, summary)."""
    import json
    from click.testing import CliRunner
    from cvflow.cli import main
    out = tmp_path_factory.mktemp("ala2_run") / "ala2"
    res = CliRunner().invoke(main, ["run", str(ROOT / "configs" / "ala2-quick.yaml"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "summary.json").read_text())


def es_loop_checks(run) -> dict:
    """What issue 3 asks of a finished entropic-switch loop (used by the slow tests and
    scripts/es_loop.py): convergence, regscores, and three checks of the final CV —
    separation of the wells, monotonic in x along y = 0 where F(x) ≤ 5 kT, production free
    energy along the CV against the exact one (RMS in kT where F ≤ 5 kT); plus the
    Boltzmann-weighted R² of the CV against x."""
    import json
    from cvflow.fes import read_fes
    run = Path(run)
    s = json.loads((run / "summary.json").read_text())
    cv = toy_cv_fn(run / s["final_cv"])
    monotonic = monotonic_in_x(cv)
    c, f, _ = read_fes(run / s["final_fes"])
    width = c[1, 0] - c[0, 0]
    edges = np.concatenate([c[:, 0] - width / 2, [c[-1, 0] + width / 2]])
    exact = es_exact_along(cv, edges)
    err, nbins = rms_kT(f, exact, BETA_ES)
    # the production's reweighted histogram of ξ too (production/fes_reweighted.csv), reported
    rw = reweighted_fes_rms(run, s, exact, BETA_ES)
    sep = float(abs(cv(np.array([[-1.0, 0.0]]))[0] - cv(np.array([[1.0, 0.0]]))[0]))
    return {"converged": s["converged"], "iterations": len(s["iterations"]),
            "regscores": [it["regscore"] for it in s["iterations"]],
            "thresholds": [it["threshold"] for it in s["iterations"]],
            "wall_seconds": sum(it["wall_seconds"] for it in s["iterations"]) + s["production"]["wall_seconds"],
            "monotonic_in_x": monotonic, "separation": sep, "fes_rms_kT": err, "fes_bins": nbins,
            "r2_x": _boltzmann_r2(cv, 0), **rw}


def monotonic_in_x(cv_fn) -> bool:
    """Is the CV monotonic in x along y = 0 where the exact F(x) ≤ 5 kT?"""
    xs = np.linspace(-1.6, 1.6, 161)
    steps = np.diff(cv_fn(np.column_stack([xs, np.zeros_like(xs)]))[es_exact_fx(xs) * BETA_ES <= 5])
    return bool(np.all(steps > 0) or np.all(steps < 0))


Y_START_GRID = [{"min": -1.2, "max": 2.8, "bins": 50}]


def es_y_start_run(seed: int, reweight: bool, y_cv: Path, work: Path) -> dict:
    """Issue 3's sanity check, one run: the entropic-switch loop with iteration 0 biased
    along y, with or without reweighting, in a subprocess with one thread (so that two run
    side by side, each reproducible). Returns es_loop_checks plus, per iteration, the CV's
    Boltzmann-weighted R² with x and y and whether it is monotonic in x."""
    import json
    import subprocess
    import sys
    import time
    name = f"{'reweighted' if reweight else 'unweighted'}-{seed}"
    run = Path(work) / name
    cfg = write_es_config(Path(work) / f"{name}.yaml", run, {
        "seed": seed, "bias": {"cv": str(y_cv), "cv_grid": Y_START_GRID},
        "model": {"reweight": reweight, "threads": 1}, "convergence": {"bootstrap": {"workers": 1}}})
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "-q"], check=True, env=env)
    s = json.loads((run / "summary.json").read_text())
    per_it = []
    for it in s["iterations"]:
        f = toy_cv_fn(run / it["cv"])
        per_it.append({"index": it["index"], "regscore": it["regscore"], "threshold": it["threshold"],
                       "r2_x": round(_boltzmann_r2(f, 0), 4), "r2_y": round(_boltzmann_r2(f, 1), 4),
                       "monotonic_in_x": monotonic_in_x(f)})
    r = {"name": name, "seed": seed, "reweight": reweight, "run_seconds": round(time.time() - t0, 1),
         "per_iteration": per_it}
    r.update(es_loop_checks(run))
    r["finds_x"] = bool(r["converged"] and r["monotonic_in_x"] and r["r2_x"] > 0.98)
    return r


def _boltzmann_r2(cv_fn, axis: int, beta=BETA_ES) -> float:
    """Squared correlation of ξ with x (axis 0) or y (axis 1) under exp(−βV) on a grid."""
    X, Y = np.meshgrid(np.linspace(-2.2, 2.2, 121), np.linspace(-1.5, 2.8, 121), indexing="ij")
    p = np.column_stack([X.ravel(), Y.ravel()])
    w = np.exp(-beta * es_potential(p[:, 0], p[:, 1]))
    w /= w.sum()
    a, b = cv_fn(p), p[:, axis]
    da, db = a - w @ a, b - w @ b
    return float((w @ (da * db)) ** 2 / ((w @ da**2) * (w @ db**2)))


def interrupted_and_resumed(monkeypatch, module, run_cls, prepare, cfg, out, stop_at: int) -> None:
    """Run ``run_cls(cfg, out)`` with a stop request at the ``stop_at``-th check of
    ``module.stop_requested`` (it must raise StopRequested naming that step), then resume
    it to the end: what an interrupted job and its ``--resume`` do."""
    from cvflow.stop import StopRequested
    prepare(cfg, out, False)
    calls = {"n": 0}

    def stop_after_some():
        calls["n"] += 1
        return calls["n"] == stop_at
    monkeypatch.setattr(module, "stop_requested", stop_after_some)
    with pytest.raises(StopRequested, match=f"step {stop_at}"):
        run_cls(cfg, out).run()
    monkeypatch.setattr(module, "stop_requested", lambda: False)
    prepare(cfg, out, True)
    run_cls(cfg, out).run()


def stop_then_resume(monkeypatch, run, calls_before_stop: int):
    """Call ``run`` (a segment or stage) with a stop request at the ``calls_before_stop``+1-th
    check of ``cvflow.sampler.stop_requested``, expect StopRequested, then call it again to
    the end (a resume) and return its result."""
    import cvflow.sampler as sampler
    from cvflow.stop import StopRequested
    calls = {"n": 0}

    def stop_after_a_while():
        calls["n"] += 1
        return calls["n"] > calls_before_stop
    monkeypatch.setattr(sampler, "stop_requested", stop_after_a_while)
    with pytest.raises(StopRequested):
        run()
    monkeypatch.setattr(sampler, "stop_requested", lambda: False)
    return run()
