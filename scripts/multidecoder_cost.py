#!/usr/bin/env python
"""Issue 19, cost: training time of the multi-decoder autoencoder (K = 2, 3) against the
plain one (K = 1) on 100k frames of 30 features (the alanine-dipeptide size), same
architecture and epochs (early stopping off), timed in interleaved rounds (K = 1, 2, 3, then
again), so that the machine's drift falls on every K alike; the median ratio goes to --json.

    python scripts/multidecoder_cost.py --json docs/measurements/multidecoder-cost-cpu-vm.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cvflow.config import ModelConfig
from cvflow.system import usable_cores
from cvflow.train import train_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    t = rng.uniform(-np.pi, np.pi, (args.frames, 2))
    mix = rng.normal(size=(4, args.features))
    x = np.column_stack([np.cos(t), np.sin(t)]) @ mix + 0.05 * rng.normal(size=(args.frames, args.features))
    kinds = (("autoencoder", 1), ("multidecoder", 2), ("multidecoder", 3))
    cfgs = {k: ModelConfig(kind=kind, decoders=k, hidden=[40], bottleneck=2, epochs=args.epochs,
                           patience=args.epochs, softmin={"anneal_epochs": args.epochs}) for kind, k in kinds}
    times = {k: [] for _, k in kinds}
    for r in range(args.repeats):
        for _, k in kinds:
            t0 = time.perf_counter()
            train_model(x, None, cfgs[k], seed=r)
            times[k].append(time.perf_counter() - t0)
        print(f"round {r + 1}: " + ", ".join(f"K={k} {times[k][-1]:.2f} s" for _, k in kinds), flush=True)
    rows = {f"K={k}": {"kind": kind, "seconds": [round(v, 2) for v in times[k]],
                       "median": round(statistics.median(times[k]), 2)} for kind, k in kinds}
    base = rows["K=1"]["median"]
    for k in ("K=2", "K=3"):
        rows[k]["ratio_to_K1"] = round(rows[k]["median"] / base, 3)
        kk = int(k[2:])  # and the median of each round's own ratio (paired, so drift cancels)
        rows[k]["paired_ratio_median"] = round(statistics.median(a / b for a, b in zip(times[kk], times[1])), 3)
    out = {"frames": args.frames, "features": args.features, "epochs": args.epochs, "hidden": [40], "bottleneck": 2,
           "torch_threads": torch.get_num_threads(), "cores": usable_cores(), "rows": rows}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
