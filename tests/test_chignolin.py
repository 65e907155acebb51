"""Chignolin in water (issue 22): the shipped set-up validates, solvates and runs a short
biased segment on the CPU (slow: a solvated system on 2 cores)."""
import json

import mdtraj as md
import numpy as np
import pytest
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ROOT, random_neural_cv

CONFIG = ROOT / "configs" / "chignolin.yaml"
PDB = ROOT / "systems" / "chignolin" / "chignolin.pdb"


def test_shipped_structure_is_chignolin():
    """The built PDB: GYDPETGTWG with hydrogens and charged termini, an extended chain."""
    t = md.load(str(PDB))
    seq = "".join(r.code for r in t.topology.residues)
    assert seq == "GYDPETGTWG" and t.n_atoms == 138
    assert sum(a.element.symbol == "H" for a in t.topology.atoms) == 138 - 77  # 76 heavy atoms + OXT
    ca = t.topology.select("name CA")
    assert md.compute_distances(t, [[ca[1], ca[8]]])[0, 0] > 1.0  # unfolded: Tyr2-Trp9 apart


@pytest.mark.slow
def test_chignolin_validates_and_runs_a_biased_segment(tmp_path):
    """`cvflow validate` on the shipped config, then 400 steps of native eABF on a random
    2-D neural CV of the 10 Cα atoms, on OpenMM's CPU platform: finite ξ and λ, a frame
    and a colvar row per report interval, and the states' distance readable on the frames."""
    res = CliRunner().invoke(main, ["validate", str(CONFIG)])
    assert res.exit_code == 0 and "explicit" in res.output, res.output
    n_atoms = int(res.output.split("(")[1].split(" atoms")[0])
    assert n_atoms > 5000  # solute + water + ions
    from cvflow.config import load_config
    from cvflow.fes import Grid
    from cvflow.sampler import load_frames, run_segment
    from cvflow.system import build_system
    cfg = load_config(CONFIG)
    cfg.md.platform, cfg.md.report_interval, cfg.md.checkpoint_interval = "CPU", 100, 200
    bundle = build_system(cfg.system, cfg.features.atoms)
    assert len(bundle.feature_atoms) == 10 and bundle.n_atoms == n_atoms
    cv = random_neural_cv(tmp_path / "cv.pt", bundle)
    grid = Grid([-1.0, -1.0], [1.0, 1.0], [40, 40])
    r = run_segment(cfg, bundle, tmp_path / "seg", 400, seed=3, cv_path=cv, grid=grid)
    print(f"chignolin ({bundle.n_atoms} atoms): {r.steps_per_second:.0f} steps/s biased on {r.platform}")
    assert r.platform == "CPU" and r.frames == 4
    from cvflow.artifacts import read_csv
    header, colvar = read_csv(tmp_path / "seg" / "colvar.csv")
    assert header[2:] == ["cv1", "cv2", "lambda1", "lambda2"]
    assert colvar.shape == (4, 6) and np.all(np.isfinite(colvar))
    frames = load_frames(tmp_path / "seg", bundle)
    assert frames.shape == (4, 138, 3) and np.all(np.isfinite(frames))  # md.save_atoms: the solute only
    seg = json.loads((tmp_path / "seg" / "segment.json").read_text())
    assert seg["saved_atoms"] == {"selection": "default", "count": 138, "of": bundle.n_atoms,
                                  "file": "saved_atoms.npy"}
    from cvflow.states import state_membership
    member = state_membership(md.Trajectory(frames, bundle.mdtraj_topology().subset(np.arange(138))), cfg.states)
    assert member["unfolded"].all() and not member["folded"].any()
    assert json.loads((tmp_path / "seg" / "segment.json").read_text())["steps"] == 400
