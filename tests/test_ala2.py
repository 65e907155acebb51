"""Alanine dipeptide: the quick loop completes; biased runs in vacuum and implicit solvent."""
import json

import mdtraj as md
import numpy as np
import torch
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ROOT


def dihedral_features(traj_dir):
    t = md.load_dcd(str(traj_dir / "traj.dcd"), top=str(traj_dir / "topology.pdb"))
    _, phi = md.compute_phi(t)
    _, psi = md.compute_psi(t)
    return t, np.column_stack([np.cos(phi[:, 0]), np.sin(phi[:, 0]), np.cos(psi[:, 0]), np.sin(psi[:, 0])])


def r2_onto(features, y):
    a = np.column_stack([features, np.ones(len(features))])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    return 1 - ((y - a @ coef) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()


def test_ala2_quick_loop(tmp_path):
    """configs/ala2-quick.yaml runs the whole loop (unbiased, then eABF on a learned 2-D CV,
    then production) and produces a 2-D free energy on the learned CV."""
    out = tmp_path / "ala2"
    res = CliRunner().invoke(main, ["run", str(ROOT / "configs" / "ala2-quick.yaml"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert len(s["iterations"]) >= 2
    from cvflow.artifacts import read_csv
    header, fes = read_csv(out / s["final_fes"])
    assert header == ["cv1", "cv2", "free_energy", "count"]
    assert np.isfinite(fes[:, 2]).sum() > 20
    # the learned CV on the production frames, against the Ramachandran angles
    t, feats = dihedral_features(out / "production")
    m = torch.jit.load(str(out / s["final_cv"]))
    with torch.no_grad():
        xi = m(torch.as_tensor(t.xyz.astype(np.float64))).numpy()
    r2 = r2_onto(feats, xi)
    print(f"ala2-quick: regscores {[it['regscore'] for it in s['iterations']]}, "
          f"R2 of CV onto (cos phi, sin phi, cos psi, sin psi) = {r2:.3f}")
    assert np.isfinite(r2)
