"""Alanine dipeptide: the quick loop completes; biased runs in vacuum and implicit solvent."""
import json

import mdtraj as md
import numpy as np
import torch
from click.testing import CliRunner

from cvflow.cli import main
from cvflow.convergence import regscore
from cvflow.cvs import ramachandran_features
from conftest import ROOT


def dihedral_features(traj_dir):
    t = md.load_dcd(str(traj_dir / "traj.dcd"), top=str(traj_dir / "topology.pdb"))
    return t, ramachandran_features(t)


def test_ala2_quick_loop(ala2_run):
    """configs/ala2-quick.yaml runs the whole loop (unbiased, then eABF on a learned 2-D CV,
    then production) and produces a 2-D free energy on the learned CV."""
    out, s = ala2_run
    assert len(s["iterations"]) >= 2
    from cvflow.artifacts import read_csv
    header, fes = read_csv(out / s["final_fes"])
    assert header == ["cv1", "cv2", "free_energy", "count"]
    assert np.isfinite(fes[:, 2]).sum() > 20
    # the learned CV on the production frames, against the Ramachandran angles
    t, feats = dihedral_features(out / "production" / "md")
    m = torch.jit.load(str(out / s["final_cv"]))
    with torch.no_grad():
        xi = m(torch.as_tensor(t.xyz.astype(np.float64))).numpy()
    r2 = regscore(feats, xi)
    print(f"ala2-quick: regscores {[it['regscore'] for it in s['iterations']]}, "
          f"R2 of CV onto (cos phi, sin phi, cos psi, sin psi) = {r2:.3f}")
    assert np.isfinite(r2)
