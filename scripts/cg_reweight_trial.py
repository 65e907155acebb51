#!/usr/bin/env python
"""Issue 21, the trial that led to ``cg.frame_weights: biased``: a VAE trained on a run's
biased frames as sampled (``frame_weights: uniform``), its samples weighted afterwards by the
mean reweighting factor of the run's iteration-0 frames in each (φ, ψ) bin (36 × 36).

    python scripts/cg_reweight_trial.py --run RUN_DIR CG_DIR [CG_DIR ...] [--jsonl OUT]

Each CG_DIR is a finished ``cvflow cg --from RUN_DIR`` with ``frame_weights: uniform`` and
``frames: initial``. Per directory: Rg and P(φ > 0) with the 2.5–97.5 % range of the
posterior draws' weighted means (the posterior counts the N frames: their weights are 1),
the samples' ESS and the share in bins no frame reached (weight 0), and the (φ, ψ) JS
divergence to the metadynamics reference, weighted and not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
BINS = 36


def phi_psi(traj):
    import mdtraj as md
    return md.compute_phi(traj)[1][:, 0], md.compute_psi(traj)[1][:, 0]


def flat_bin(phi, psi):
    edges = np.linspace(-np.pi, np.pi, BINS + 1)
    i = np.clip(np.digitize(phi, edges) - 1, 0, BINS - 1)
    j = np.clip(np.digitize(psi, edges) - 1, 0, BINS - 1)
    return i * BINS + j


def rg(traj) -> np.ndarray:
    """Radius of gyration (nm) of every frame, all atoms unweighted (MDTraj's compute_rg)."""
    c = traj.xyz - traj.xyz.mean(1, keepdims=True)
    return np.sqrt((c ** 2).sum(-1).mean(-1))


def iteration0(run: str):
    """A run's iteration-0 frames (MDTraj) and their reweighting factors."""
    from cvflow.config import ConfigError
    from cvflow.sampler import read_dcd
    it0 = Path(run) / "iter_000"
    if not (it0 / "md" / "traj.dcd").exists() or not (it0 / "weights.npy").exists():
        raise ConfigError(f"--run: {run} has no finished iteration 0 (iter_000/md/traj.dcd, iter_000/weights.npy)")
    return read_dcd(it0 / "md" / "traj.dcd", it0 / "md" / "topology.pdb"), np.load(it0 / "weights.npy")


def cg_samples(d: Path):
    """A finished ``cvflow cg`` directory's samples (MDTraj)."""
    from cvflow.config import ConfigError
    from cvflow.sampler import read_dcd
    if not (d / "samples.dcd").exists():
        raise ConfigError(f"{d}: no samples.dcd (not a finished cvflow cg directory of a molecule)")
    return read_dcd(d / "samples.dcd", d / "topology.pdb")


def report(rows: list[dict], jsonl: str | None) -> int:
    for row in rows:
        print(json.dumps(row))
    if jsonl:
        Path(jsonl).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


def parse_args(doc: str):
    """CG_DIR ..., --run RUN_DIR, --jsonl OUT: what these scripts take."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("cg_dirs", nargs="+")
    ap.add_argument("--run", required=True)
    ap.add_argument("--jsonl", default=None)
    return ap.parse_args()


def main() -> int:
    args = parse_args(__doc__)
    from cvflow.cg import js_divergence, phi_psi_histogram
    from cg_ala2_energy import reference
    frames, w = iteration0(args.run)
    fb = flat_bin(*phi_psi(frames))
    count = np.bincount(fb, minlength=BINS * BINS)
    mean_w = np.where(count > 0, np.bincount(fb, weights=w, minlength=BINS * BINS) / np.maximum(count, 1), 0.0)
    ref = reference()["histogram"]
    rows = []
    for d in map(Path, args.cg_dirs):
        s = cg_samples(d)
        draw = np.load(d / "samples_latent.npz")["draw"]
        phi, psi = phi_psi(s)
        sw = mean_w[flat_bin(phi, psi)]
        r = rg(s)

        def weighted(v, ww):
            per = [np.average(v[draw == k], weights=ww[draw == k]) for k in np.unique(draw)]
            return [float(np.average(v, weights=ww)), *map(float, np.percentile(per, [2.5, 97.5]))]
        deg = np.degrees(phi), np.degrees(psi)
        rows.append({"cg_dir": str(d), "n_frames": int(len(np.load(d / "data.npz")["weights"])),
                     "rg_nm": weighted(r, sw), "rg_nm_unweighted": weighted(r, np.ones_like(r)),
                     "p_phi_positive": weighted((phi > 0).astype(float), sw),
                     "unreached_fraction": float((count[flat_bin(phi, psi)] == 0).mean()),
                     "ess_fraction": float(sw.sum() ** 2 / (sw ** 2).sum() / len(sw)),
                     "js_to_reference_nats": js_divergence(ref, phi_psi_histogram(*deg, weights=sw)),
                     "js_to_reference_unweighted_nats": js_divergence(ref, phi_psi_histogram(*deg))})
    return report(rows, args.jsonl)


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
