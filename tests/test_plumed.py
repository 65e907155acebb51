"""The PLUMED engine (DRR + PYTORCH_MODEL) against cvflow's own CV and native engine.

All tests here need a kernel (PLUMED_KERNEL); they skip with the reason otherwise.
`.ci/run` builds the kernel with scripts/install-plumed.sh (cached) and runs them.
"""
import subprocess
import sys

import numpy as np
import openmm as mm
import pytest
from openmm import unit as u
from scipy.spatial.transform import Rotation

from cvflow.config import Config, GridDim
from cvflow.fes import Grid, read_fes
from cvflow.sampler import make_bias, run_segment
from cvflow.system import build_system
from conftest import ALA2_PDB, BETA_ES, ROOT, es_exact_fx, linear_toy_cv, random_neural_cv, rms_kT

pytestmark = pytest.mark.plumed


def _frames(bundle, n=100, seed=0):
    """Perturbed, randomly rotated and translated copies of the PDB structure."""
    rng = np.random.default_rng(seed)
    out = []
    for r in Rotation.random(n, random_state=seed):
        x = bundle.positions + rng.normal(0, 0.02, bundle.positions.shape)
        out.append(r.apply(x - x.mean(0)) + rng.normal(0, 1.0, 3))
    return np.array(out)


def test_plumed_cv_values_and_forces_match_native(tmp_path, plumed_kernel):
    """On 100 frames of alanine dipeptide: PLUMED's ξ (PYTORCH_MODEL on raw POSITIONs) equals
    cvflow's to 1e-5, and its bias forces equal the native engine's −κ(ξ − λ)∇ξ, at the λ
    that DRR reports, to 1e-4 relative (PYTORCH_MODEL computes in float32)."""
    from cvflow.bias.plumed import make_plumed_bias
    bundle = build_system(Config.model_validate({"system": {"pdb": str(ALA2_PDB)}}).system, "backbone")
    cv = random_neural_cv(tmp_path / "cv.pt", bundle, seed=3)
    cfg = Config.model_validate({"system": {"pdb": str(ALA2_PDB)},
                                 "md": {"steps": 1000, "report_interval": 1, "checkpoint_interval": 1000},
                                 "bias": {"kappa": "500 kJ/mol/cv^2", "fullsamples": 1}})
    grid = Grid.from_dims([GridDim(min=-1, max=1, bins=20)] * 2)
    pl = make_plumed_bias(cfg, bundle, cv, grid, seed=1, out_dir=tmp_path / "pl")
    native = make_bias(cfg, bundle, cv, grid, seed=1)
    system = mm.System()
    for i in range(bundle.n_atoms):
        system.addParticle(bundle.system.getParticleMass(i))
    system.addForce(pl.make_force())
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    frames = _frames(bundle)
    forces = []
    for k, x in enumerate(frames):
        ctx.setStepCount(k)
        ctx.setPositions(x * u.nanometer)
        forces.append(ctx.getState(getForces=True).getForces(asNumpy=True).value_in_unit(
            u.kilojoule_per_mole / u.nanometer))
    pl.finish(ctx)
    header, rows = read_csv_plumed(tmp_path / "pl" / "plumed" / "COLVAR")
    rows = rows[: len(frames)]
    xi_plumed, lam_plumed = rows[:, 1:3], rows[:, 3:5]
    sel = native.cv.particles
    xi_native = np.array([native.cv(x[sel])[0].copy() for x in frames])
    assert np.abs(xi_plumed - xi_native).max() < 1e-5
    native.initialised = True
    worst = 0.0
    for k, x in enumerate(frames[1:], start=1):  # at step 0 DRR puts λ on ξ: no force
        native.lam[:] = lam_plumed[k]
        _, f_native = native.coupling(x[sel])
        f_plumed = forces[k][sel]
        scale = np.abs(f_native).max()
        assert scale > 1.0
        worst = max(worst, np.abs(f_plumed - f_native).max() / scale)
    print(f"max |ξ_plumed − ξ_cvflow| = {np.abs(xi_plumed - xi_native).max():.2e}; "
          f"max relative force difference {worst:.2e}")
    assert worst < 1e-4


def read_csv_plumed(path):
    """A PLUMED COLVAR file: ``#! FIELDS`` header, space-separated rows."""
    lines = path.read_text().splitlines()
    fields = next(ln.split()[2:] for ln in lines if ln.startswith("#! FIELDS"))
    rows = np.array([[float(v) for v in ln.split()] for ln in lines if ln and not ln.startswith("#")])
    return fields, rows


def test_plumed_and_native_czar_agree_with_exact_on_entropic_switch(tmp_path, es_config, plumed_kernel):
    """ξ = x: both engines within 0.3 kT RMS of the exact F(x) where F ≤ 5 kT, and of each other.

    Measured at 100k steps: PLUMED 0.06 kT, native 0.12 kT from exact, 0.11 kT between them.
    """
    cfg = es_config.model_copy(deep=True)
    bundle = build_system(cfg.system)
    cv = linear_toy_cv(tmp_path / "x.pt", [[1.0, 0.0]])
    grid = Grid.from_dims([GridDim(min=-2.0, max=2.0, bins=50)])
    f = {}
    for engine in ("plumed", "native"):
        res = run_segment(cfg, bundle, tmp_path / engine, 100_000, seed=11, cv_path=cv, grid=grid, engine=engine)
        c, f[engine], _ = read_fes(tmp_path / engine / "fes.csv")
        err, nbins = rms_kT(f[engine], es_exact_fx(c[:, 0]), BETA_ES)
        print(f"{engine}: {err:.3f} kT RMS from exact over {nbins} bins, {res.steps_per_second:.0f} steps/s")
        assert nbins >= 20 and err < 0.3
    exact = es_exact_fx(c[:, 0])
    both, nbins = rms_kT(f["plumed"], np.where(exact * BETA_ES <= 5, f["native"], np.nan), BETA_ES, max_kT=np.inf)
    print(f"plumed vs native: {both:.3f} kT RMS over {nbins} bins")
    assert both < 0.3


def test_run_ala2_quick_with_plumed_engine(tmp_path, plumed_kernel):
    """`cvflow run` with `bias.engine: plumed` completes the alanine-dipeptide quick config."""
    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    cfg["system"]["pdb"] = str(ALA2_PDB)
    cfg["bias"]["engine"] = "plumed"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(path), "--out", str(out), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["engine"] == "plumed"
    import json
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_fes"]
    assert (out / "iter_001" / "md" / "plumed" / "plumed.dat").is_file()
    _, f, _ = read_fes(out / summary["final_fes"])
    assert np.isfinite(f).sum() > 20
    # one colvar row per frame, at the frames' steps (PLUMED flushes its last rows at the end)
    from cvflow.artifacts import read_csv
    for stage in ("iter_001/md", "production/md"):
        _, rows = read_csv(out / stage / "colvar.csv")
        assert np.array_equal(rows[:, 0].astype(np.int64), np.load(out / stage / "frame_steps.npy")), stage
    # no per-step λ statistics from PLUMED: the stage is reweighted by CZAR, and says so
    assert summary["iterations"][1]["reweighting"]["estimator"] == "czar"
