#!/usr/bin/env python
"""Issue 21, reverse KL on a molecule: ``cvflow cg CONFIG --no-data`` on alanine dipeptide
(no MD at all), over seeds, against the metadynamics reference of (φ, ψ).

    python scripts/cg_ala2_energy.py --config CONFIG [--seeds 1 2] [--work /tmp/cg-ala2-energy]
        [--json docs/measurements/cg-ala2-energy-cpu-vm.json]

For each seed, from the model's generated structures:
- the populations of C5/C7eq (φ < 0, ψ outside [−150°, 50°)), αR (φ < 0, ψ in it) and
  C7ax (φ > 0), against the reference's, which come from the well-tempered metadynamics free
  energy of docs/measurements/ala2-reference.npz (scripts/ala2_reference.py, 40 ns × 3 seeds);
- the Jensen–Shannon divergence (nats) of the generated (φ, ψ) histogram (36 × 36) to the
  reference's;
- whether the latent space separates the states: the accuracy of a 25-nearest-neighbour
  classifier of the state from the encoder mean (even samples fitted, odd ones scored),
  against the majority share;
- the median reduced energy of the samples against that of plain MD frames' is not computed
  here (no MD is run); the report's latent.png draws z coloured by φ and ψ.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KB = 0.0083144626
STATES = {"C5_C7eq": {"phi": [-180, 0], "psi": [50, -150]}, "alphaR": {"phi": [-180, 0], "psi": [-150, 50]},
          "C7ax": {"phi": [0, 180]}}


def label(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """0: C5/C7eq, 1: αR, 2: C7ax (degrees)."""
    alpha = (psi >= -150) & (psi < 50)
    return np.where(phi >= 0, 2, np.where(alpha, 1, 0))


def reference() -> dict:
    """State populations and the 36 × 36 (φ, ψ) histogram of the metadynamics free energy."""
    d = np.load(ROOT / "docs" / "measurements" / "ala2-reference.npz")
    kT = KB * 300.0
    p = np.exp(-(d["free_energy"] - d["free_energy"].min()) / kT)
    p /= p.sum()
    phi, psi = np.meshgrid(d["phi"], d["psi"], indexing="ij")
    lab = label(np.degrees(phi) if np.abs(d["phi"]).max() < 7 else phi,
                np.degrees(psi) if np.abs(d["psi"]).max() < 7 else psi)
    pops = {name: float(p[lab == k].sum()) for k, name in enumerate(STATES)}
    h = p.reshape(36, 2, 36, 2).sum((1, 3))
    return {"populations": pops, "histogram": h / h.sum()}


def one(seed: int, base: dict, work: Path, ref: dict) -> dict:
    from cg_toys import run_no_data
    t0 = time.time()
    out, cfg_path = run_no_data(dict(base, seed=seed, states=STATES), work, f"seed{seed}")
    row = evaluate(out, cfg_path, ref)
    row.update(seed=seed, wall_s=round(time.time() - t0, 1))
    return row


def evaluate(out: Path, cfg_path: Path, ref: dict) -> dict:
    """The populations, JS divergence and latent separation of a finished run directory."""
    from cvflow.cg import CGRun, js_divergence, phi_psi_histogram
    from cvflow.config import load_config
    from cvflow.states import torsion_values
    import mdtraj as md
    import torch
    run = CGRun(load_config(cfg_path), out)
    x = run.samples()
    traj = md.Trajectory(x.astype(np.float32), run.bundle.mdtraj_topology())
    phi, psi = torsion_values(traj, "phi", None), torsion_values(traj, "psi", None)
    lab = label(phi, psi)
    pops = {name: float((lab == k).mean()) for k, name in enumerate(STATES)}
    js = js_divergence(ref["histogram"].ravel(), phi_psi_histogram(phi, psi).ravel())
    model, space, _ = run.load_model()
    with torch.no_grad():
        z = model.encode(torch.as_tensor(space.to_v(x[:20000])))[0].numpy()
    from scipy.spatial import cKDTree
    y = lab[: len(z)]
    _, nb = cKDTree(z[::2]).query(z[1::2], k=25)
    votes = np.stack([(y[::2][nb] == k).sum(1) for k in range(3)], 1)
    acc = float((votes.argmax(1) == y[1::2]).mean())
    majority = float(np.bincount(y[1::2], minlength=3).max() / len(y[1::2]))
    info = json.loads((out / "cg.json").read_text())
    train = json.loads((out / "manifest.json").read_text())["stages"]["train"]
    return {"populations": pops, "reference_populations": ref["populations"],
            "js_phi_psi_to_reference_nats": js, "latent_knn_state_accuracy": acc, "majority_share": majority,
            "rg_nm": info["observables"]["rg_nm"]["mean"], "levels": train.get("levels"), "steps": train.get("steps"),
            "energy_evaluations": train.get("energy_evaluations"), "train_wall_s": train.get("wall_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cg-ala2-energy.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--label", default="shipped")
    ap.add_argument("--work", default="/tmp/cg-ala2-energy")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "cg-ala2-energy-cpu-vm.json"))
    args = ap.parse_args()
    cfg = Path(args.config).resolve()
    from cvflow.config import dump_config, load_config
    base = dump_config(load_config(cfg))  # every path resolved, so the copies may live anywhere
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ref = reference()
    print("reference populations", {k: round(v, 4) for k, v in ref["populations"].items()})
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda s: one(s, base, work, ref), args.seeds))
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                          if k != "reference_populations"}))
    out = Path(args.json)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = {"config": str(cfg.relative_to(ROOT)) if cfg.is_relative_to(ROOT) else str(cfg),
                        "reference": "metadynamics free energy, docs/measurements/ala2-reference.npz",
                        "states": STATES, "runs": rows}
    out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
