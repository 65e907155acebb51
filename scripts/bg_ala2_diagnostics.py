#!/usr/bin/env python
"""What limits the alanine-dipeptide Boltzmann generator (issue 20): one flow trained in
process by ML (optionally followed by ML + KL), measured by its held-out likelihood and by
the ESS of its importance weights, for a given amount and kind of training data.

    python scripts/bg_ala2_diagnostics.py --frames 40000 --steps 1000 --narrow 1 --tag narrow40k
    python scripts/bg_ala2_diagnostics.py --source RUN_DIR --weight-exponent 0 --frames 97000 ...

Data: without --source, unbiased MD of configs/bg-ala2.yaml's system (5 ns, and 15 ns more
for over 47,000 frames; a frame every 100 fs; made once in --work; they stay near C7eq/C5); with --source, iteration
0 of a cvflow run (configs/bg-ala2.yaml's eABF on (phi, psi)), with its reweighting factors
raised to --weight-exponent (0: uniform, 1: Boltzmann). 3,000 frames are held out.
``--narrow 0`` keeps every torsion periodic (the transform before session 20); 1 maps the
narrow ones like angles (cvflow.flows.NARROW_TORSION). Appends one JSON line to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=1500, help="ML steps")
    ap.add_argument("--kl-steps", type=int, default=0, help="ML + KL steps after them")
    ap.add_argument("--kl-weight", type=float, default=0.5)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    ap.add_argument("--transforms", type=int, default=6)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--narrow", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--source", type=Path, help="a cvflow run of configs/bg-ala2.yaml")
    ap.add_argument("--weight-exponent", type=float, default=0.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bg-ala2-diagnostics"))
    ap.add_argument("--tag", default="run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "measurements" / "bg-ala2-diagnostics-cpu-vm.jsonl")
    a = ap.parse_args()
    import mdtraj as mdt
    from cvflow.config import config_from_dict
    from cvflow.dataset import effective_sample_size, normalised_weights
    from cvflow.energy import energy, regularised
    from cvflow.flows import BoltzmannGenerator, MoleculeCoordinates
    from cvflow.generate import GenerateRun
    from cvflow.sampler import load_frames, read_dcd, run_segment
    from cvflow.states import state_membership
    torch.set_num_threads(1)
    cfg = yaml.safe_load((ROOT / "configs" / "bg-ala2.yaml").read_text())
    cfg["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
    cfg["bias"]["cv"] = str(ROOT / "systems" / "alanine-dipeptide" / "phipsi.pt")
    cfg["md"]["report_interval"] = 50
    c = config_from_dict(cfg)
    gr = GenerateRun(c, a.work / "scratch", None)
    if a.source is None:
        parts = []
        runs = ((2_500_000, 7), (7_500_000, 11)) if a.frames > 47_000 else ((2_500_000, 7),)
        for k, (steps, seed) in enumerate(runs):
            path = a.work / f"md{k}.npy"
            if not path.exists():
                run_segment(c, gr.bundle, a.work / f"md{k}", steps, seed, engine="none")
                np.save(path, load_frames(a.work / f"md{k}", gr.bundle))
            parts.append(np.load(path))
        x = np.concatenate(parts)
        wts = np.ones(len(x))
    else:
        md_dir = a.source / "iter_000" / "md"
        x = read_dcd(md_dir / "traj.dcd", md_dir / "topology.pdb").xyz.astype(np.float64)
        wts = np.load(a.source / "iter_000" / "weights.npy") ** a.weight_exponent
    perm = np.random.default_rng(0).permutation(len(x))
    val, tr = x[perm[:3000]], x[perm[3000:3000 + a.frames]]
    w_tr = torch.as_tensor(wts[perm[3000:3000 + a.frames]], dtype=torch.float64)
    coords = MoleculeCoordinates.fit(gr.zmatrix, gr.constraints(), tr, w_tr.numpy(), narrow=a.narrow)
    torch.manual_seed(a.seed)
    model = BoltzmannGenerator(coords, a.transforms, a.hidden, a.bins)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    with torch.no_grad():
        y_tr, ld_tr = coords.to_flow(torch.as_tensor(tr))
        y_va, ld_va = coords.to_flow(torch.as_tensor(val))
    y_tr, y_va = y_tr.float(), y_va.float()
    e_ref = float(np.nanmin(gr.bridge(tr[:2000])[0])) / gr.kT
    total = a.steps + a.kl_steps
    t0, hist = time.time(), []
    for s in range(total):  # constant, then a cosine to 0 over the second half
        lr = a.lr if s < total // 2 else 0.5 * a.lr * (1 + math.cos(math.pi * (s - total // 2) / (total - total // 2)))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.multinomial(w_tr, 256, replacement=True)
        loss = -(model.log_prob_flow(y_tr[idx]).double() + ld_tr[idx]).mean()
        if s >= a.steps:
            k = a.kl_weight * min(1.0, (s - a.steps + 1) / 200)
            xk, lqk = model.sample(256)
            loss = loss + k * (regularised(energy(xk.double(), gr.bridge) / gr.kT, e_ref + 100) + lqk).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        hist.append(loss.item())
    train_s = time.time() - t0
    with torch.no_grad():
        val_nll = -(model.log_prob_flow(y_va).double() + ld_va).mean().item()
        xs, lq = model.sample(a.samples)
    u = gr.bridge(xs.numpy())[0] / gr.kT
    lw = -u - lq.numpy()
    lw[~np.isfinite(lw)] = -np.inf
    w = normalised_weights(lw)
    mem = state_membership(mdt.Trajectory(xs.numpy().astype(np.float32), gr.bundle.mdtraj_topology()), c.states)
    res = {"tag": a.tag, "source": "unbiased MD" if a.source is None else f"eABF on (phi, psi), weights^{a.weight_exponent}",
           "frames": len(tr), "ml_steps": a.steps, "kl_steps": a.kl_steps, "kl_weight": a.kl_weight, "bins": a.bins,
           "narrow": a.narrow, "seed": a.seed, "train_nll_last100": float(np.mean(hist[-100:])), "val_nll": val_nll,
           "samples": a.samples, "ess_percent": 100 * effective_sample_size(w) / len(w),
           "largest_weight": float(w.max() / w.sum()), "median_sample_betaU": float(np.median(u)),
           "median_heldout_frame_betaU": float(np.median(gr.bridge(val)[0] / gr.kT)),
           "sample_fraction_C7ax": float(mem["C7ax"].mean()),
           "delta_f_C7ax_minus_C7eq": float(-gr.kT * np.log(w[mem["C7ax"]].sum() / w[mem["C7eq"]].sum())),
           "train_s": train_s}
    print(json.dumps(res), flush=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
