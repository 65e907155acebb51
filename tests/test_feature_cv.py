"""CVs that take features rather than positions (mlcolvar's ``to_torchscript`` convention):
the config declares the features, cvflow composes them with the model into a CV file."""
import mdtraj as md
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from cvflow.config import CVFeature, ConfigError
from cvflow.cvs import wrap_feature_cv
from cvflow.fastcv import load_cv
from conftest import ALA2_PDB, ROOT

PHI, PSI = [4, 6, 8, 14], [6, 8, 14, 16]  # ACE-ALA-NME (MDTraj's compute_phi/psi give the same)
FEATURES = [CVFeature(kind="cos_torsion", atoms=PHI), CVFeature(kind="sin_torsion", atoms=PHI),
            CVFeature(kind="cos_torsion", atoms=PSI), CVFeature(kind="sin_torsion", atoms=PSI),
            CVFeature(kind="distance", atoms=[4, 16]), CVFeature(kind="position", atoms=[8])]


def mlcolvar_like(path, n_in, n_out=2, seed=0):
    """A model saved the way mlcolvar's ``to_torchscript`` saves one: traced, float32, input
    (batch, n_in) → (batch, n_out)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(n_in, 16), torch.nn.Tanh(), torch.nn.Linear(16, n_out)).eval()
    torch.jit.trace(net, torch.zeros(1, n_in)).save(str(path))
    return net


def test_features_match_mdtraj_and_gradients_match_finite_differences(tmp_path):
    net = mlcolvar_like(tmp_path / "m.pt", 8)
    out = wrap_feature_cv(tmp_path / "m.pt", FEATURES, 22, tmp_path / "cv.pt")
    cv = torch.jit.load(str(out))
    t = md.load(str(ALA2_PDB))
    rng = np.random.default_rng(1)
    xyz = t.xyz[0].astype(np.float64) + rng.normal(scale=0.01, size=(22, 3))
    tt = md.Trajectory(xyz[None].astype(np.float32), t.topology)
    phi = md.compute_dihedrals(tt, [PHI])[0, 0]
    psi = md.compute_dihedrals(tt, [PSI])[0, 0]
    d = md.compute_distances(tt, [[4, 16]])[0, 0]
    expect = np.array([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi), d, *xyz[8]])
    got = cv.features(torch.as_tensor(xyz)).numpy()
    assert np.allclose(got, expect, atol=1e-5)  # MDTraj works in float32
    with torch.no_grad():
        ref = net(torch.as_tensor(expect, dtype=torch.float32)[None])[0].numpy()
    assert np.allclose(cv(torch.as_tensor(xyz)).detach().numpy(), ref, atol=1e-5)
    # the gradient the engines use (autograd through the composed file) against central differences
    ev = load_cv(out, 22)
    xi, jac = ev(xyz)
    h = 1e-4
    for a in (4, 8, 16):
        for k in range(3):
            p, m = xyz.copy(), xyz.copy()
            p[a, k] += h
            m[a, k] -= h
            fd = (ev(p)[0] - ev(m)[0]) / (2 * h)
            assert np.allclose(jac[:, a, k], fd, rtol=2e-3, atol=2e-3), (a, k)


def test_wrong_feature_count_and_atom_index_are_named(tmp_path):
    mlcolvar_like(tmp_path / "m.pt", 5)
    with pytest.raises(ConfigError, match=r"does not take the 8 features"):
        wrap_feature_cv(tmp_path / "m.pt", FEATURES, 22, tmp_path / "cv.pt")
    with pytest.raises(ConfigError, match=r"atom index 30 .* 22 atoms"):
        wrap_feature_cv(tmp_path / "m.pt", [CVFeature(kind="distance", atoms=[0, 30])], 22, tmp_path / "cv.pt")


def test_config_declares_features_and_the_run_starts_biased(tmp_path):
    """An ala2 run whose initial CV is an mlcolvar-style model on (cos φ, sin φ, cos ψ, sin ψ)."""
    mlcolvar_like(tmp_path / "mlc.pt", 4, n_out=1)
    d = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    d["system"]["pdb"] = str(ALA2_PDB)
    d["md"].update(steps=2000, report_interval=50, checkpoint_interval=1000)
    d["bias"].update(cv="mlc.pt", cv_grid=[{"min": -2, "max": 2, "bins": 40}],
                     cv_features=[{"kind": k, "atoms": q} for q in (PHI, PSI) for k in ("cos_torsion", "sin_torsion")])
    d["model"].update(epochs=5)
    d["convergence"].update(max_iterations=1, production_steps=1000)
    d["output"] = str(tmp_path / "run")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    it0 = tmp_path / "run" / "iter_000"
    assert (it0 / "initial_cv.pt").exists() and (it0 / "md" / "fes.csv").exists()
    # a feature list that does not fit the model is a one-line error at validate time
    d["bias"]["cv_features"] = d["bias"]["cv_features"][:3]
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 2 and "does not take the 3 features" in res.output and "Traceback" not in res.output
    d["bias"]["cv_features"] = [{"kind": "torsion", "atoms": [1, 2, 3]}]
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 2 and "bias.cv_features" in res.output and "takes 4 atom" in res.output
    # without a grid for the foreign CV, validate asks for one
    d["bias"]["cv_features"] = [{"kind": k, "atoms": q} for q in (PHI, PSI) for k in ("cos_torsion", "sin_torsion")]
    del d["bias"]["cv_grid"]
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 2 and "bias.cv_grid: give the grid" in res.output
