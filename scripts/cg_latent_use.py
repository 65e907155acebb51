#!/usr/bin/env python
"""Issue 21, reverse KL on a molecule: does a ``cvflow cg --no-data`` model use its latent
variable, and how tight is its entropy bound? For a checkpoint (or a finished cg.pt) of a
run of CONFIG, on the model's own samples at the checkpoint's β_s:

- the reverse-KL objective E[log q(x) + β_s U/kT] with log q(x) bounded above by the
  importance-weighted bound (k = 0: the encoder bound; k = 8, 64, 512) and below by
  importance sampling with the encoder (k = 64, 512, 4096): where the two meet, the bound is
  tight and the objective is the KL to the tempered target up to log Z;
- the encoder's posterior width and the distance from the generating z to its mean: both
  about 1 (the prior's) when the decoder ignores z, i.e. all of q's spread comes from σ;
- the decoder's median σ in the torsions and in the other internal coordinates.

    python scripts/cg_latent_use.py CONFIG CHECKPOINT [--samples 500] [--levels N]

``--levels N`` also prints every Nth tempering level recorded in a checkpoint (β_s, the
bounds and the state populations), for a run stopped before it wrote tempering.csv.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("checkpoint", help="checkpoint.pt of a run, or its cg.pt (then at beta)")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--levels", type=int, default=0, help="print every Nth recorded tempering level")
    args = ap.parse_args()
    from script_exit import scratch_dir
    import torch
    from cvflow.cg import CGRun, energy
    from cvflow.config import load_config
    cfg = load_config(args.config)
    ck = torch.load(args.checkpoint, weights_only=False)
    run = CGRun(cfg, scratch_dir("cg-latent-use-"))
    space = run.space()
    model = run.build_model(space)
    model.load_state_dict(ck["model"])
    model.eval()
    beta = float(ck["state"]["beta"]) if "state" in ck else 1.0
    if args.levels and "state" in ck:
        st = ck["state"]
        for lev, pops in list(zip(st["levels"], st.get("level_states", [])))[::args.levels]:
            print(f"level {lev[0]}: step {lev[1]}, beta_s {lev[2]:.4g} beta, ELBO {lev[3]:.2f}, log Z {lev[4]:.2f}; "
                  + "; ".join(f"P({k}) {v:.3f}" for k, v in pops.items()))
    torch.manual_seed(0)
    out = {"checkpoint": args.checkpoint, "beta_fraction": beta, "samples": args.samples}
    with torch.no_grad():
        z, v, _, _ = model.sample_joint(args.samples)
        x, log_det = space.forward(v)
        tilt = beta * energy(x, run.bridge) / run.kT - log_det
        for k in (0, 8, 64, 512):
            out[f"objective_upper_k{k}"] = float((model.log_marginal_upper(z, v, k) + tilt).mean())
        for k in (64, 512, 4096):
            out[f"objective_lower_k{k}"] = float((model.log_marginal(v, k) + tilt).mean())
        mu, logvar = model.encode(v)
        out["encoder_sd_median"] = float(torch.exp(0.5 * logvar).median())
        out["generating_z_to_encoder_mean_median"] = float((z - mu).norm(dim=1).median())
        _, xlv = model.decode(z)
        sd = torch.exp(0.5 * xlv)
        out["decoder_sd_median_torsions"] = float(sd[:, model.periodic].median())
        out["decoder_sd_median_other"] = float(sd[:, ~model.periodic].median())
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
