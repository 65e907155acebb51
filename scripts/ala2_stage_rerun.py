#!/usr/bin/env python
"""Run one more biased stage on a CV that a finished alanine-dipeptide run learned, with
another seed, κ or timestep, and compare its ΔF(C7ax − C7eq) with the truth on its frames.

    python scripts/ala2_stage_rerun.py RUN_DIR ITER OUT [--kappa auto|250] [--timestep-fs 2]
        [--ns 10] [--seed 99] [--projection-interval N]
        [--json docs/measurements/ala2-stage-reruns-cpu-vm.json]

The CV is RUN_DIR/iter_ITER/cv.pt (the production CV when ITER is the last iteration), on the
loop's own grid rule, started from the last frame of that iteration, for ``--ns`` ns with
frames every 0.5 ps. The estimate is the run's reweighting (extended); the truth is the
metadynamics reference on the same frames (scripts/ala2_error_decomposition.py). Rows are
appended to ``--json``. Several seeds on one CV give the spread of one stage's estimate;
κ and the timestep test whether the coupling or its integration cause the error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from ala2_error_decomposition import crossings, delta_f, reference_log_weights  # noqa: E402


def stage_setup(run: Path, iteration: int, edit=None):
    """A finished run's config (``edit``: a function that changes the raw config first), its
    system, iteration ``iteration``'s frames, CV file and the loop's grid for that CV."""
    import yaml
    from cvflow.config import Config
    from cvflow.fes import Grid
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.workflow import Workflow, cv_values
    raw = yaml.safe_load((run / "config.resolved.yaml").read_text())["config"]
    if not Path(raw["system"]["pdb"]).exists():
        raw["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
    if edit is not None:
        edit(raw)
    cfg = Config.model_validate(raw)
    bundle = build_system(cfg.system, cfg.features.atoms)
    src = run / f"iter_{iteration:03d}"
    start = load_frames(src / "md", bundle)
    cv = src / "cv.pt"
    grid = Grid.from_list(Workflow._grid_from_values(SimpleNamespace(cfg=cfg), cv_values(cv, start)))
    return cfg, bundle, start, cv, grid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("iteration", type=int)
    ap.add_argument("out")
    ap.add_argument("--kappa", default="auto", help="auto, or kJ/mol/cv² as a number")
    ap.add_argument("--timestep-fs", type=float, default=2.0)
    ap.add_argument("--ns", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--projection-interval", type=int, default=None,
                    help="bias.projection_interval (0: bin-wise ABF); default: the run's config value")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-stage-reruns-cpu-vm.json"))
    args = ap.parse_args()
    import mdtraj as md
    from cvflow.dataset import normalised_weights, stage_log_weights
    from cvflow.report import phi_psi_degrees
    from cvflow.sampler import derive_seed, load_frames, run_segment
    from cvflow.units import kT as kT_of
    from cvflow.workflow import cv_values
    run, out = Path(args.run), Path(args.out)
    steps = int(round(args.ns * 1e6 / args.timestep_fs))

    def edit(raw):
        if args.projection_interval is not None:
            raw["bias"]["projection_interval"] = args.projection_interval or None
        if args.kappa != "auto":
            raw["bias"]["kappa"] = f"{float(args.kappa)} kJ/mol/cv^2"
        raw["md"].update(timestep=f"{args.timestep_fs} fs", report_interval=int(round(500 / args.timestep_fs)),
                         checkpoint_interval=steps)
    cfg, bundle, start, cv, grid = stage_setup(run, args.iteration, edit)
    t0 = time.time()
    run_segment(cfg, bundle, out / "md", steps, derive_seed(cfg.seed, args.seed, 0), cv_path=cv, grid=grid,
                engine="native", start_positions=start[-1])
    frames = load_frames(out / "md", bundle)
    phi, psi = phi_psi_degrees(md.Trajectory(frames, bundle.mdtraj_topology()))
    kT = kT_of(cfg.md.temperature)
    ax = phi > 0
    logw, _ = stage_log_weights(out / "md", 1.0 / kT, cfg.bias.reweighting, cv_values(cv, frames))
    kappa = float((out / "md" / "fes.csv").read_text().split("kappa = ")[1].split()[0])
    row = {"run": str(run), "cv": str(cv), "seed": args.seed, "kappa": kappa, "timestep_fs": args.timestep_fs,
           "projection_interval": cfg.bias.projection_interval,
           "ns": args.ns, "md_seconds": time.time() - t0, "crossings": crossings(phi),
           "phi_positive": float(ax.mean()),
           "delta_f_estimate": delta_f(normalised_weights(logw), ax, ~ax, kT),
           "delta_f_truth_same_frames": delta_f(normalised_weights(reference_log_weights(phi, psi, kT)), ax, ~ax, kT)}
    print(json.dumps(row))
    path = Path(args.json)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    path.write_text(json.dumps({"rows": rows + [row]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
