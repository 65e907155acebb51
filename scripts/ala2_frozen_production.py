#!/usr/bin/env python
"""A production with a frozen bias on alanine dipeptide, on any CV, over seeds: ΔF(C7ax − C7eq)
by the exact weights of the frozen stage, against the metadynamics reference.

    python scripts/ala2_frozen_production.py OUT --cv systems/alanine-dipeptide/phipsi.pt
        [--adaptive-ns 10] [--frozen-ns 20] [--seeds 1 2 3] [--jobs 2]
        [--stride 1] [--json docs/measurements/ala2-frozen-production-phipsi-cpu-vm.json]
    python scripts/ala2_frozen_production.py OUT --run runs/ala2-paper/seed1 ...   # its final CV

Each seed runs what ``convergence.production_frozen_steps`` adds to a run's production, with
configs/ala2-paper.yaml's settings (native engine, projected ABF): ``--adaptive-ns`` of eABF
on the CV, then ``--frozen-ns`` with that bias frozen (``run_segment(..., freeze=True)``).
A torsion CV (its values in [−π, π)) gets a periodic 40 × 40 grid; a learned CV the grid
the loop gives it. For every seed: ΔF from the frozen stage (block-bootstrap error, the
ΔF of its four quarters, its C7eq ↔ C7ax crossings) and, for comparison, the extended
estimate of the eABF stage before it. With the CV (φ, ψ), which drives the crossings
itself, this checks the frozen-bias weights on the molecule; with a learned CV it shows
what they give where the CV does not resolve φ. ``--stride k`` sets ``bias.stride`` (the bias
every k steps with k times its force: multiple time stepping) in both stages.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def paper_config(seed: int, **sections):
    """configs/ala2-paper.yaml for ``seed`` with ``sections`` updated (e.g. ``bias={"stride": 2}``),
    validated (a pydantic ValidationError if the changes do not fit)."""
    import yaml
    from cvflow.config import Config
    raw = yaml.safe_load((ROOT / "configs" / "ala2-paper.yaml").read_text())
    raw["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
    raw["seed"] = seed
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Config.model_validate(raw)


def paper_setup(cv: Path, seed: int, **sections):
    """:func:`paper_config`, its system, and the grid of the CV in ``cv``: periodic 40 × 40 for
    a torsion CV (values in [−π, π)), else the loop's grid from its values on the frames it
    was trained on (``md`` beside it). Returns (cfg, bundle, grid)."""
    import torch
    from cvflow.fastcv import cv_format
    from cvflow.fes import Grid
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.workflow import Workflow, cv_values
    cfg = paper_config(seed, **sections)
    bundle = build_system(cfg.system, cfg.features.atoms)
    if cv_format(torch.jit.load(str(cv))) == "torsions/1":
        d = cv_values(cv, bundle.positions[None]).shape[1]
        grid = Grid([-np.pi] * d, [np.pi] * d, [40] * d, [True] * d)
    else:
        from types import SimpleNamespace
        frames = load_frames(Path(cv).parent / "md", bundle)
        grid = Grid.from_list(Workflow._grid_from_values(SimpleNamespace(cfg=cfg), cv_values(cv, frames)))
    return cfg, bundle, grid


def one_seed(out: Path, cv: Path, seed: int, adaptive_ns: float, frozen_ns: float, stride: int = 1) -> dict:
    """Both stages for one seed (resumed when a stage is unfinished) and their ΔF."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import mdtraj as md
    from ala2_error_decomposition import crossings, quarter_delta_f
    from cvflow.dataset import normalised_weights, stage_log_weights
    from cvflow.sampler import derive_seed, last_positions, load_frames, run_segment
    from cvflow.states import state_free_energies
    from cvflow.units import kT as kT_of
    from cvflow.workflow import cv_values
    cfg, bundle, grid = paper_setup(cv, seed, bias={"stride": stride})
    kT = kT_of(cfg.md.temperature)
    t0 = time.time()

    def steps(ns: float) -> int:
        return int(round(ns * 1000.0 / cfg.md.timestep))  # md.timestep in ps
    run_segment(cfg, bundle, out / "adaptive", steps(adaptive_ns), derive_seed(seed, 1), cv_path=cv, grid=grid)
    run_segment(cfg, bundle, out / "frozen", steps(frozen_ns), derive_seed(seed, 2), cv_path=cv, grid=grid,
                start_positions=last_positions(out / "adaptive", bundle),
                bias_start=out / "adaptive" / "bias_state.npz", freeze=True)
    row = {"seed": seed, "cv": str(cv), "adaptive_ns": adaptive_ns, "frozen_ns": frozen_ns, "stride": stride,
           "seconds": time.time() - t0}
    for part in ("adaptive", "frozen"):
        frames = load_frames(out / part, bundle)
        phi = np.degrees(md.compute_phi(md.Trajectory(frames, bundle.mdtraj_topology()))[1][:, 0])
        logw, info = stage_log_weights(out / part, 1.0 / kT, "extended", cv_values(cv, frames))
        w = normalised_weights(logw)
        res = state_free_energies({"C7eq": phi <= 0, "C7ax": phi > 0}, w, kT)
        quarters = quarter_delta_f(w, phi, kT)
        row[part] = {"weights": info["estimator"], "delta_f": res["delta_f"]["C7ax"]["value"],
                     "error": res["delta_f"]["C7ax"]["error"], "quarters": quarters, "crossings": crossings(phi),
                     "phi_positive": float(np.mean(phi > 0)), "ess": float(w.sum() ** 2 / np.sum(w * w))}
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--cv", help="a CV file")
    src.add_argument("--run", help="a finished run directory: its final CV")
    ap.add_argument("--adaptive-ns", type=float, default=10.0)
    ap.add_argument("--frozen-ns", type=float, default=20.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stride", type=int, default=1, help="bias.stride of both stages")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from pydantic import ValidationError
    from cvflow.config import format_validation_error
    try:
        paper_config(args.seeds[0], bias={"stride": args.stride})
    except ValidationError as e:
        ap.error(f"--stride {args.stride}: " + format_validation_error(e, "configs/ala2-paper.yaml"))
    cv = Path(args.cv) if args.cv else Path(args.run) / json.loads((Path(args.run) / "summary.json").read_text())[
        "final_cv"]
    ref = json.loads((ROOT / "docs" / "measurements" / "ala2-reference.json").read_text())
    ref_df = ref["delta_f_C7ax_minus_C7eq"]
    out = Path(args.out)
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one_seed, [out / f"seed{s}" for s in args.seeds], [cv.resolve()] * len(args.seeds),
                             args.seeds, [args.adaptive_ns] * len(args.seeds), [args.frozen_ns] * len(args.seeds),
                             [args.stride] * len(args.seeds)))
    print(f"reference ΔF(C7ax − C7eq) = {ref_df:.2f} ± {ref['error']:.2f} kJ/mol; CV {cv}")
    for r in rows:
        a, f = r["adaptive"], r["frozen"]
        print(f"seed {r['seed']}: frozen {f['delta_f']:.2f} ± {f['error']:.2f} kJ/mol ({f['delta_f'] - ref_df:+.2f}; "
              f"{f['crossings']} crossings in {r['frozen_ns']:g} ns; quarters "
              + ", ".join(f"{q:.2f}" for q in f["quarters"]) + f"); eABF stage, extended weights "
              f"{a['delta_f']:.2f} ({a['delta_f'] - ref_df:+.2f}); {r['seconds'] / 60:.1f} min")
    errs = np.array([r["frozen"]["delta_f"] - ref_df for r in rows])
    print(f"frozen: RMS error {np.sqrt(np.mean(errs ** 2)):.2f} kJ/mol, within 1 kJ/mol in "
          f"{int(np.sum(np.abs(errs) <= 1))} of {len(errs)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference": ref_df, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
