#!/usr/bin/env python
"""Issue 21, data-driven: does a ``cvflow cg --from`` model keep a minor state of its
frames? For each finished cg directory DIR (trained on frames of RUN, its config in
DIR.yaml as scripts/cg_ala2.py writes it, or --config):

- the state's population in the training frames (reweighted, with the delta-method standard
  error of a self-normalised mean) and in the model's samples (cg.json, 95 % interval);
- the latent codes of the state's frames (the encoder means), decoded: the share of the
  decoded mean structures that lie in the state, and the decoder's σ there against its
  median over all frames (in units of the features' scale): a decoder that maps the codes
  back to another state with a wide σ treats the state as noise;
- for a peptide, the (φ, ψ) Jensen–Shannon divergence to the metadynamics reference with
  the generated histogram as it is, and with its φ > 0 half replaced by the frames' (and the
  rest rescaled): how much of the divergence the state's population accounts for.

    python scripts/cg_minor_state.py RUN DIR [DIR ...] [--state C7ax] [--config CONFIG]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the cvflow run whose frames the cg directories trained on")
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--state", default="C7ax", help="a state of the config's states section")
    ap.add_argument("--config", default=None, help="default: DIR.yaml")
    args = ap.parse_args()
    import torch
    from cvflow.cg import CGRun, js_divergence, weighted_mean_se
    from cvflow.config import ConfigError, load_config
    from cg_ala2_energy import reference  # the metadynamics (φ, ψ) histogram, 36 × 36 bins
    ref = reference()["histogram"]
    for d in map(Path, args.dirs):
        if not ((d / "cg.json").exists() and (d / "data.npz").exists()):
            raise ConfigError(f"{d}: not a finished `cvflow cg --from` directory (no cg.json or data.npz)")
        cfg = load_config(args.config or d.with_suffix(".yaml"))
        if not cfg.states or args.state not in cfg.states:
            raise ConfigError(f"--state {args.state}: not a state of {args.config or d.with_suffix('.yaml')}")
        run = CGRun(cfg, d, from_run=Path(args.run))
        model, space, _ = run.load_model()
        data = np.load(d / "data.npz")
        x, w = data["positions"], data["weights"]
        inside = run.membership(x, cfg.states)[args.state]
        own = weighted_mean_se(inside.astype(float), w)
        info = json.loads((d / "cg.json").read_text())
        pred = info["states"][args.state]
        with torch.no_grad():
            v = torch.as_tensor(space.to_v(x))
            codes = model.encoder(v)
            mean, logvar = model.decode(codes)
        decoded = run.membership(space.to_x(mean.numpy()), cfg.states)[args.state]
        sd = torch.exp(0.5 * logvar).mean(1).numpy()
        row = {"dir": str(d), "state": args.state, "frames": int(inside.sum()), "of": len(x),
               "frames_population": own["mean"], "frames_se": own["se"],
               "model_population": pred["mean"], "model_low": pred["low"], "model_high": pred["high"],
               "decoded_codes_in_state": float(decoded[inside].mean()) if inside.any() else None,
               "decoder_sd_at_state_codes": float(np.median(sd[inside])) if inside.any() else None,
               "decoder_sd_median": float(np.median(sd))}
        pp = info.get("phi_psi")
        if pp and "frames" in pp:
            gen, frames = np.array(pp["generated"]), np.array(pp["frames"])
            swapped = gen.copy()
            swapped[18:] = frames[18:]  # rows are φ bins of 10° from −180°: φ > 0 from row 18
            swapped[:18] *= (1 - frames[18:].sum()) / gen[:18].sum()
            row |= {"js_to_reference": js_divergence(ref, gen), "js_frames_to_reference": js_divergence(ref, frames),
                    "js_to_reference_with_frames_phi_positive": js_divergence(ref, swapped)}
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
