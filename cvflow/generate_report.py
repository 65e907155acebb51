"""Plots of a ``cvflow generate`` directory (``report/``): the samples over the potential
(toys) or on the Ramachandran map (peptides), the histogram of the importance weights, and
the training curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import normalised_weights
from .report import _plt, phi_psi_degrees, ramachandran_panel, save_figure


def write_generate_report(run) -> list[Path]:
    """Write the plots of ``run`` (a :class:`cvflow.generate.GenerateRun`); returns their paths."""
    out = run.out / "report"
    out.mkdir(exist_ok=True)
    logw = np.load(run.out / "log_weights.npy")
    w = normalised_weights(logw)
    paths = [_weights(logw, out / "weights.png"), _training(run.out / "training.csv", out / "training.png")]
    if run.bundle.is_toy:
        paths.append(_toy_samples(run, w, out / "samples.png"))
    else:
        p = _ramachandran(run, w, out / "ramachandran.png")
        if p is not None:
            paths.append(p)
    return [p for p in paths if p is not None]


def _weights(logw: np.ndarray, path: Path) -> Path:
    plt = _plt()
    finite = logw[np.isfinite(logw)]
    rel = (finite - np.log(np.exp(finite - finite.max()).sum()) - finite.max()) / np.log(10) + np.log10(len(logw))
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.hist(rel, bins=80, color="tab:blue")
    ax.set_xlabel("log10(w · n)  (0: the weight of a perfect generator)")
    ax.set_ylabel("samples")
    ax.set_title(f"importance weights ({len(logw) - len(finite)} without a finite energy)")
    return save_figure(fig, path)


def _training(csv_path: Path, path: Path) -> Path | None:
    from .artifacts import read_csv
    if not csv_path.exists():
        return None
    _, data = read_csv(csv_path)
    if data.size == 0:
        return None
    data = data.reshape(-1, 6)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for col, name in ((1, "ML: −⟨log q⟩ on the frames"), (2, "KL: ⟨βU + log q⟩ on samples")):
        y = data[:, col]
        if np.isfinite(y).any():
            ax.plot(data[:, 0], y, lw=0.8, label=name)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("nats")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _toy_samples(run, w: np.ndarray, path: Path) -> Path:
    from .report import _toy_energies
    x = run.samples()
    d = np.load(run.out / "data.npz")
    frames = d["positions"][d["weights"] > 0].reshape(-1, 2)
    span = np.concatenate([x, frames]) if len(frames) else x  # the states the frames saw, even if q misses them
    lo, hi = np.percentile(span, 0.1, axis=0), np.percentile(span, 99.9, axis=0)
    lo, hi = np.minimum(lo, frames.min(0)) if len(frames) else lo, np.maximum(hi, frames.max(0)) if len(frames) else hi
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 100)
    xx, yy = np.meshgrid(gx, gy)
    pts = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], 1)
    v = _toy_energies(run.bundle, pts).reshape(xx.shape) / run.kT
    v -= v.min()
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax in axes:
        ax.contour(gx, gy, v, levels=np.arange(0, 16, 1.0), colors="0.6", linewidths=0.5)
    show = np.random.default_rng(0).permutation(len(x))[:3000]
    axes[0].scatter(x[show, 0], x[show, 1], s=2, c="tab:blue", alpha=0.5, label="generator samples")
    if len(frames):
        pick = np.random.default_rng(1).permutation(len(frames))[:1000]
        axes[0].scatter(frames[pick, 0], frames[pick, 1], s=3, c="tab:red", marker="x", lw=0.6,
                        label="training frames")
        axes[0].legend(fontsize=7, loc="best")
    axes[0].set_title("samples (unweighted) over U/kT")
    h, ex, ey = np.histogram2d(x[:, 0], x[:, 1], [np.linspace(lo[0], hi[0], 60), np.linspace(lo[1], hi[1], 50)],
                               weights=w)
    with np.errstate(divide="ignore"):
        f = -np.log(h / h.sum())
    f -= f[np.isfinite(f)].min()
    im = axes[1].imshow(np.where(np.isfinite(f), f, np.nan).T, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]),
                        aspect="auto", cmap="viridis", vmax=12)
    fig.colorbar(im, ax=axes[1], label="reweighted −ln p (kT)")
    axes[1].set_title("reweighted samples")
    for ax in axes:
        ax.set_xlabel("x (nm)")
    axes[0].set_ylabel("y (nm)")
    return save_figure(fig, path)


def _ramachandran(run, w: np.ndarray, path: Path) -> Path | None:
    import mdtraj as md
    angles = phi_psi_degrees(md.Trajectory(run.samples().astype(np.float32), run.bundle.mdtraj_topology()))
    if angles is None:
        return None
    phi, psi = angles
    edges = np.linspace(-180, 180, 61)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, weights, title in ((axes[0], None, "generator samples (unweighted)"),
                               (axes[1], w, "reweighted samples")):
        h, _, _ = np.histogram2d(phi, psi, [edges, edges], weights=weights)
        ramachandran_panel(fig, ax, h, run.kT, title)
    return save_figure(fig, path)
