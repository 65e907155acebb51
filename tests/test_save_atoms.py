"""md.save_atoms (issue 22): a solvated run keeps the solute's atoms in its frames, not the
water, and trains, reweights and reports from them."""
import json

import mdtraj as md
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ROOT


def _explicit_quick(tmp_path, **md_over):
    cfg = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    cfg["system"].update(pdb=str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb"), solvent="explicit",
                         padding="0.6 nm", cutoff="0.6 nm")
    # one CPU thread: the only setting under which the CPU platform gives the same trajectory
    # twice (test_one_cpu_thread_gives_the_same_solvated_trajectory_twice)
    cfg["md"].update(steps=1000, report_interval=50, checkpoint_interval=500, platform="CPU", threads=1)
    cfg["md"].update(md_over)
    cfg["model"].update(epochs=10, patience=5)
    cfg["convergence"].update(max_iterations=2, production_steps=1000)
    cfg["states"] = {"C7eq": {"phi": [-180, 0]}, "C7ax": {"phi": [0, 180]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_solvated_run_saves_the_solute_only(tmp_path):
    """Alanine dipeptide in a small water box, two short iterations and production: every
    stage's frames hold the 22 solute atoms (the default for explicit water), segment.json
    and saved_atoms.npy say so, row i of colvar.csv is the CV of frame i, and the states and
    the report's maps are computed from the saved atoms."""
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", str(_explicit_quick(tmp_path)), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    from cvflow.workflow import cv_values
    for stage in ("iter_000/md", "iter_001/md", "production/md"):
        d = out / stage
        seg = json.loads((d / "segment.json").read_text())
        assert seg["saved_atoms"]["count"] == 22 and seg["saved_atoms"]["of"] > 200  # 85 waters with 0.6 nm of padding
        assert np.array_equal(np.load(d / "saved_atoms.npy"), np.arange(22))
        t = md.load_dcd(str(d / "traj.dcd"), top=str(d / "topology.pdb"))
        assert t.n_atoms == 22 and t.n_frames == 20
        assert [r.name for r in t.topology.residues] == ["ACE", "ALA", "NME"]
    # frame i and colvar row i are one configuration, through the saved atoms
    d = out / "iter_001" / "md"
    t = md.load_dcd(str(d / "traj.dcd"), top=str(d / "topology.pdb"))
    n_all = json.loads((d / "segment.json").read_text())["saved_atoms"]["of"]
    xi = cv_values(out / "iter_000" / "cv.pt", t.xyz.astype(np.float64), np.arange(22), n_all)
    colvar = np.genfromtxt((ln for ln in open(d / "colvar.csv") if not ln.startswith("#")), delimiter=",",
                           names=True)  # the README's way to read it
    assert np.allclose(xi[:, 0], colvar["cv1"], atol=1e-5) and np.allclose(xi[:, 1], colvar["cv2"], atol=1e-5)
    s = json.loads((out / "summary.json").read_text())
    pops = s["states"]["populations"]
    assert pops["C7eq"]["value"] + pops["C7ax"]["value"] == pytest.approx(1.0)
    assert len(np.load(out / "production" / "weights.npy")) == 20
    res = CliRunner().invoke(main, ["report", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert (out / "report" / "report.html").exists()


def test_save_atoms_all_and_bad_selections(tmp_path):
    from cvflow.config import load_config
    from cvflow.system import build_system, saved_atom_indices
    cfg = load_config(_explicit_quick(tmp_path))
    bundle = build_system(cfg.system, cfg.features.atoms)
    assert saved_atom_indices(bundle, "all") is None
    assert np.array_equal(saved_atom_indices(bundle, None), np.arange(22))
    # a selection without the feature atoms gets them added (the features need them)
    got = saved_atom_indices(bundle, "resname ACE")
    assert set(bundle.feature_atoms) <= set(got) and set(range(6)) <= set(got)
    from cvflow.config import ConfigError
    with pytest.raises(ConfigError, match="md.save_atoms"):
        saved_atom_indices(bundle, "resname NOPE")
    with pytest.raises(ConfigError, match="md.save_atoms"):
        saved_atom_indices(bundle, "(((")
    # walkers start from frames: they need every atom
    d = yaml.safe_load(_explicit_quick(tmp_path).read_text())
    d["execution"] = {"walkers": 2}
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2 and "md.save_atoms" in res.output, res.output


def test_one_cpu_thread_gives_the_same_solvated_trajectory_twice(tmp_path):
    """On OpenMM's CPU platform with PME, one thread and DeterministicForces (which cvflow
    sets) give the same frames to the bit; without DeterministicForces the nonbonded forces
    already differ in their last bits from one Context to the next, and 1000 steps make that
    a difference of about 1 nm (scripts/cpu_determinism.py)."""
    from cvflow.config import load_config
    from cvflow.sampler import run_segment
    from cvflow.system import build_system, cpu_reproducible, platform_properties
    import openmm as mm
    cfg = load_config(_explicit_quick(tmp_path))
    bundle = build_system(cfg.system, cfg.features.atoms)
    cpu = mm.Platform.getPlatformByName("CPU")
    assert platform_properties(cpu, 1) == {"DeterministicForces": "true", "Threads": "1"}
    assert cpu_reproducible(cpu, 1) and not cpu_reproducible(cpu, 2)
    assert cpu_reproducible(mm.Platform.getPlatformByName("Reference"), None)
    frames = []
    for name in ("a", "b"):
        run_segment(cfg, bundle, tmp_path / name, 1000, seed=3, engine="none")
        d = tmp_path / name
        frames.append(md.load_dcd(str(d / "traj.dcd"), top=str(d / "topology.pdb")).xyz)
    assert frames[0].shape == (20, 22, 3)
    assert np.array_equal(frames[0], frames[1])


def test_a_pinned_segment_runs_on_its_core_and_gives_the_same_frames(tmp_path):
    """md.pin: the segment's OpenMM threads run on one core (md.threads unset: 1 when pinned),
    segment.json says which, the calling thread gets its own cores back afterwards, and the
    frames are the bits of the same segment unpinned on one thread."""
    import os
    from cvflow.config import load_config
    from cvflow.sampler import run_segment
    from cvflow.system import build_system
    cfgs = {"pinned": load_config(_explicit_quick(tmp_path, pin=True, threads=None)),
            "free": load_config(_explicit_quick(tmp_path))}
    bundle = build_system(cfgs["free"].system, cfgs["free"].features.atoms)
    before = os.sched_getaffinity(0)
    frames = {}
    for name, cfg in cfgs.items():
        res = run_segment(cfg, bundle, tmp_path / name, 400, seed=3, engine="none")
        seg = json.loads((tmp_path / name / "segment.json").read_text())
        assert seg["md_threads"] == res.threads == 1
        assert seg["md_cores"] == ([min(before)] if name == "pinned" else None), seg
        d = tmp_path / name
        frames[name] = md.load_dcd(str(d / "traj.dcd"), top=str(d / "topology.pdb")).xyz
    assert os.sched_getaffinity(0) == before
    assert np.array_equal(frames["pinned"], frames["free"])


@pytest.mark.parametrize("threads, offset, slot, allowed, expected", [
    (None, 0, 0, [0, 1], [0]),          # unset: one core
    (2, 1, 1, list(range(8)), [3, 4]),  # walker slot 1 of two-thread walkers, from core 1
    (1, 3, 2, [0, 1, 2, 3], [1]),       # wraps around the cores this process may use
    (4, 0, 0, [2, 5], [2, 5]),          # never more cores than there are
])
def test_pinned_cores(monkeypatch, threads, offset, slot, allowed, expected):
    from cvflow.config import MDConfig
    from cvflow.sampler import os as sampler_os, pinned_cores
    monkeypatch.setattr(sampler_os, "sched_getaffinity", lambda pid: set(allowed))
    cfg = MDConfig(pin=True, pin_offset=offset, threads=threads)
    assert pinned_cores(cfg, slot) == expected
    assert pinned_cores(MDConfig(threads=threads), slot) is None
