"""Plots of a ``cvflow cg`` directory (``report/``), after Schöberl et al.: the latent space
coloured by the dihedrals (or by x for a toy), the configurations decoded along each latent
axis, the predicted distributions against the reference ones (the training frames, or the
exact density of a toy), the tempering schedule with the bounds on log Z, and the training
curve."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .report import _plt, phi_psi_degrees, ramachandran_panel, save_figure

AXIS_POINTS = 9  # decoded structures per latent axis, z from −2.5 to 2.5


def write_cg_report(run) -> list[Path]:
    """Write the plots of ``run`` (a :class:`cvflow.cg.CGRun`); returns their paths."""
    out = run.out / "report"
    out.mkdir(exist_ok=True)
    info = json.loads((run.out / "cg.json").read_text())
    model, space, _ = run.load_model()
    paths = [_training(run, out / "training.png"), _latent_map(run, model, space, out / "latent.png"),
             _latent_axes(run, model, space, out)]
    if run.bundle.is_toy:
        paths.append(_toy_marginal(info, out / "marginal_x.png"))
    else:
        paths.append(_ramachandran(info, out / "ramachandran.png"))
    if (run.out / "tempering.csv").exists():
        paths.append(_tempering(run, out / "tempering.png"))
    return [p for p in paths if p is not None]


def _training(run, path: Path) -> Path | None:
    from .artifacts import read_csv
    _, data = read_csv(run.out / "training.csv")
    if data.size == 0:
        return None
    data = data.reshape(-1, 3)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    y = data[:, 1]
    ax.plot(data[:, 0], y, lw=0.6)
    lo, hi = np.nanpercentile(y, [1, 99])
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("−ELBO per frame (nats)" if run.mode == "data" else "reverse-KL objective at β_s (nats)")
    return save_figure(fig, path)


def _encoded(run, model, space, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encoder(torch.as_tensor(space.to_v(x))).numpy()


def _latent_map(run, model, space, path: Path) -> Path | None:
    if run.mode == "data":
        d = np.load(run.out / "data.npz")
        x, label = d["positions"], "training frames"
    else:
        x, label = run.samples(), "generated configurations"
    x = x[np.random.default_rng(0).permutation(len(x))[:5000]]
    z = _encoded(run, model, space, x)
    z2 = z if z.shape[1] >= 2 else np.column_stack([z[:, 0], np.zeros(len(z))])
    plt = _plt()
    if run.bundle.is_toy:
        colours = [("x (nm)", x[:, 0]), ("y (nm)", x[:, 1])]
    else:
        import mdtraj as md
        angles = phi_psi_degrees(md.Trajectory(x.astype(np.float32), run.bundle.mdtraj_topology()))
        colours = ([("φ (degrees)", angles[0]), ("ψ (degrees)", angles[1])] if angles is not None
                   else [("Rg (nm)", run.observables(x)["rg_nm"])])
    fig, axes = plt.subplots(1, len(colours), figsize=(5 * len(colours), 4.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], colours):
        cmap = "twilight" if "degrees" in name else "viridis"
        sc = ax.scatter(z2[:, 0], z2[:, 1], c=c, s=3, cmap=cmap)
        fig.colorbar(sc, ax=ax, label=name)
        ax.set_xlabel("z₁ (encoder mean: the CV)")
        ax.set_ylabel("z₂" if z.shape[1] >= 2 else "")
        ax.set_title(f"latent space of the {label}")
    return save_figure(fig, path)


def _latent_axes(run, model, space, out: Path) -> Path | None:
    """μ_θ(z) along each latent axis: a DCD per axis for molecules (and φ, ψ along it), or
    the decoded curve over the toy's density."""
    t = np.linspace(-2.5, 2.5, AXIS_POINTS)
    t0 = np.linspace(*model.prior_range(), AXIS_POINTS)  # z₁ spans every component of a mixture prior
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in range(model.latent):
        along = t0 if k == 0 else t
        z = np.zeros((AXIS_POINTS, model.latent))
        z[:, k] = along
        with torch.no_grad():
            xm = space.to_x(model.decode(torch.as_tensor(z))[0].numpy())
        if run.bundle.is_toy:
            ax.plot(xm[:, 0], xm[:, 1], "o-", ms=3, label=f"μ(z) along z{k + 1}")
        else:
            from .sampler import write_trajectory
            write_trajectory(out, run.bundle, xm, name=f"latent_axis_{k + 1}.dcd")
            import mdtraj as md
            angles = phi_psi_degrees(md.Trajectory(xm.astype(np.float32), run.bundle.mdtraj_topology()))
            if angles is None:
                continue
            phi, psi = angles
            ax.plot(phi, psi, "o-", ms=3, label=f"z{k + 1} from {along[0]:.1f} to {along[-1]:.1f}")
            ax.annotate("start", (phi[0], psi[0]), fontsize=7)
    if run.bundle.is_toy:
        s = run.samples()[:3000]
        ax.scatter(s[:, 0], s[:, 1], s=1, c="0.7", zorder=0, label="generated")
        ax.set_xlabel("x (nm)")
        ax.set_ylabel("y (nm)")
    else:
        ax.set_xlim(-180, 180)
        ax.set_ylim(-180, 180)
        ax.set_xlabel("φ (degrees)")
        ax.set_ylabel("ψ (degrees)")
        ax.set_title("decoded structures along each latent axis\n(report/latent_axis_*.dcd)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out / "latent_axes.png")


def _toy_marginal(info: dict, path: Path) -> Path:
    m = info["exact"]["x_marginal"]
    e = np.array(m["edges"])
    c = 0.5 * (e[1:] + e[:-1])
    w = e[1] - e[0]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, log in zip(axes, (False, True)):
        ax.plot(c, np.array(m["exact"]) / w, "k-", lw=1.2, label="exact (quadrature)")
        ax.step(c, np.array(m["model"]) / w, where="mid", color="tab:blue", lw=1, label="generated q(x₁)")
        ax.set_xlabel("x₁ (nm)")
        ax.set_ylabel("density")
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1e-5, None)
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"marginal of x₁: JS {m['js_nats']:.4f} nats; KL(q‖p) {info['exact']['kl_q_to_p_nats']:.3f}")
    return save_figure(fig, path)


def _ramachandran(info: dict, path: Path) -> Path | None:
    pp = info.get("phi_psi")
    if not pp:
        return None
    plt = _plt()
    panels = [("generated", np.array(pp["generated"]))]
    if "frames" in pp:
        panels.insert(0, ("training frames (reweighted)", np.array(pp["frames"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    kT = info["kT_kj_per_mol"]
    for ax, (name, h) in zip(axes[0], panels):
        ramachandran_panel(fig, ax, h, kT, name + (f"\nJS to the frames {pp['js_to_frames_nats']:.3f} nats"
                                                   if name == "generated" and "js_to_frames_nats" in pp else ""),
                           vmax=30)
    return save_figure(fig, path)


def _tempering(run, path: Path) -> Path | None:
    from .artifacts import read_csv
    _, d = read_csv(run.out / "tempering.csv")
    if d.size == 0:
        return None
    d = d.reshape(-1, 7)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogy(d[:, 1], d[:, 2], "o-", ms=2)
    axes[0].set_xlabel("optimiser step")
    axes[0].set_ylabel("β_s / β")
    axes[0].set_title("tempering schedule")
    for col, name in ((3, "ELBO (lower bound)"), (4, "log Z estimate"), (5, "CUBO (upper bound)")):
        axes[1].plot(d[:, 2], d[:, col], "o-", ms=2, lw=0.8, label=name)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("β_s / β")
    axes[1].set_ylabel("log Z_βs (nats)")
    axes[1].legend(fontsize=8)
    return save_figure(fig, path)
