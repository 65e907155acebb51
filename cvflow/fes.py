"""CZAR free-energy estimator and integration of gradients on a grid.

CZAR (Lesage et al., J. Phys. Chem. B 121, 3676, 2017) estimates the gradient of the
free energy along ξ from an extended-system run:

    ∇F(z) = −kT ∇ ln ρ̄(z) + κ (⟨λ⟩_z − z)

where ρ̄ is the (biased) histogram of ξ and ⟨λ⟩_z the mean of λ among samples with ξ
in bin z. The statistics are a count and a sum of λ per bin, so those of several runs
(walkers) add exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import lsqr

from .artifacts import read_csv, write_csv


@dataclass
class Grid:
    """A regular grid in CV space: one ``(min, max, bins)`` per dimension."""
    mins: np.ndarray
    maxs: np.ndarray
    bins: np.ndarray

    @classmethod
    def from_dims(cls, dims) -> "Grid":
        return cls(np.array([d.min for d in dims], float), np.array([d.max for d in dims], float),
                   np.array([d.bins for d in dims], np.int64))

    @property
    def dim(self) -> int:
        return len(self.bins)

    @property
    def widths(self) -> np.ndarray:
        return (self.maxs - self.mins) / self.bins

    def centers(self) -> list[np.ndarray]:
        return [self.mins[i] + (np.arange(self.bins[i]) + 0.5) * self.widths[i] for i in range(self.dim)]

    def mesh(self) -> np.ndarray:
        """Bin centres, shape ``(*bins, dim)``."""
        return np.stack(np.meshgrid(*self.centers(), indexing="ij"), axis=-1)

    def to_list(self) -> list[dict]:
        return [{"min": float(a), "max": float(b), "bins": int(n)} for a, b, n in zip(self.mins, self.maxs, self.bins)]


@dataclass
class CZARStats:
    """Additive CZAR statistics on a grid: sample count and Σλ per bin of ξ."""
    grid: Grid
    kappa: float
    kT: float
    count: np.ndarray   # (*bins,)
    sum_lambda: np.ndarray  # (*bins, dim)

    def merge(self, other: "CZARStats") -> "CZARStats":
        """Statistics of two runs on the same grid, as if they were one run."""
        if not (np.allclose(self.grid.mins, other.grid.mins) and np.allclose(self.grid.maxs, other.grid.maxs)
                and np.array_equal(self.grid.bins, other.grid.bins)):
            raise ValueError("cannot merge CZAR statistics on different grids")
        return CZARStats(self.grid, self.kappa, self.kT, self.count + other.count,
                         self.sum_lambda + other.sum_lambda)

    def gradient(self, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """CZAR gradient ``(*bins, dim)`` in kJ/mol per CV unit, and the mask of usable bins."""
        g = self.grid
        count = self.count.astype(float)
        ok = count >= min_count
        with np.errstate(divide="ignore", invalid="ignore"):
            logrho = np.where(ok, np.log(np.where(ok, count, 1.0)), np.nan)
            mean_lam = self.sum_lambda / count[..., None]
        z = g.mesh()
        grad = np.full(tuple(g.bins) + (g.dim,), np.nan)
        for i in range(g.dim):
            dlog = _finite_gradient(logrho, g.widths[i], axis=i)
            grad[..., i] = -self.kT * dlog + self.kappa * (mean_lam[..., i] - z[..., i])
        mask = ok & np.all(np.isfinite(grad), axis=-1)
        return grad, mask

    def free_energy(self, min_count: int = 1) -> np.ndarray:
        """Free energy on the grid in kJ/mol, minimum 0, NaN where unsampled."""
        grad, mask = self.gradient(min_count)
        if self.grid.dim == 1:
            f = integrate_1d(grad[:, 0], self.grid.widths[0], mask)
        else:
            f = integrate_2d(grad, self.grid.widths, mask)
        return f - np.nanmin(f) if np.any(np.isfinite(f)) else f

    def save(self, path) -> None:
        np.savez(path, mins=self.grid.mins, maxs=self.grid.maxs, bins=self.grid.bins,
                 kappa=self.kappa, kT=self.kT, count=self.count, sum_lambda=self.sum_lambda)

    @classmethod
    def load(cls, path) -> "CZARStats":
        d = np.load(path)
        return cls(Grid(d["mins"], d["maxs"], d["bins"]), float(d["kappa"]), float(d["kT"]),
                   d["count"], d["sum_lambda"])


def _finite_gradient(a: np.ndarray, h: float, axis: int) -> np.ndarray:
    """Central differences where both neighbours are finite, one-sided otherwise."""
    a = np.moveaxis(a, axis, 0)
    out = np.full_like(a, np.nan)
    n = a.shape[0]
    if n >= 2:
        fwd = (a[1:] - a[:-1]) / h  # between j and j+1
        central = np.full_like(a, np.nan)
        central[1:-1] = 0.5 * (fwd[1:] + fwd[:-1])
        out = central
        left = np.full_like(a, np.nan)
        left[1:] = fwd
        right = np.full_like(a, np.nan)
        right[:-1] = fwd
        out = np.where(np.isfinite(out), out, np.where(np.isfinite(right), right, left))
    return np.moveaxis(out, 0, axis)


def integrate_1d(grad: np.ndarray, width: float, mask: np.ndarray) -> np.ndarray:
    """Cumulative trapezoid integration over the longest run of usable bins."""
    f = np.full(grad.shape, np.nan)
    runs, start = [], None
    for j, m in enumerate(list(mask) + [False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            runs.append((start, j))
            start = None
    if not runs:
        return f
    a, b = max(runs, key=lambda r: r[1] - r[0])
    f[a] = 0.0
    for j in range(a + 1, b):
        f[j] = f[j - 1] + 0.5 * (grad[j] + grad[j - 1]) * width
    return f


def integrate_2d(grad: np.ndarray, widths: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares (Poisson) integration of a 2-D gradient field on the usable bins."""
    nx, ny = mask.shape
    index = -np.ones(mask.shape, dtype=np.int64)
    index[mask] = np.arange(mask.sum())
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    for axis, (di, dj) in enumerate(((1, 0), (0, 1))):
        a = mask[: nx - di, : ny - dj] & mask[di:, dj:]
        ii, jj = np.nonzero(a)
        for i, j in zip(ii, jj):
            p, q = index[i, j], index[i + di, j + dj]
            rows += [r, r]
            cols += [q, p]
            vals += [1.0 / widths[axis], -1.0 / widths[axis]]
            rhs.append(0.5 * (grad[i, j, axis] + grad[i + di, j + dj, axis]))
            r += 1
    f = np.full(mask.shape, np.nan)
    if r == 0:
        return f
    n = int(mask.sum())
    # gauge: the mean of F is zero
    rows += [r] * n
    cols += list(range(n))
    vals += [1.0 / n] * n
    rhs.append(0.0)
    a = sp.csr_matrix((vals, (rows, cols)), shape=(r + 1, n))
    sol = lsqr(a, np.asarray(rhs), atol=1e-12, btol=1e-12, iter_lim=20000)[0]
    f[mask] = sol
    return f


def write_fes(path, stats: CZARStats, engine: str = "native") -> None:
    """``fes.csv``: bin centres, free energy (kJ/mol, minimum 0) and sample count."""
    f = stats.free_energy()
    mesh = stats.grid.mesh().reshape(-1, stats.grid.dim)
    header = [f"cv{i + 1}" for i in range(stats.grid.dim)] + ["free_energy", "count"]
    rows = np.column_stack([mesh, f.reshape(-1), stats.count.reshape(-1)])
    write_csv(path, header, rows, comments=[
        f"CZAR free energy from cvflow ({engine} engine)",
        "cv columns: bin centres in CV units; free_energy: kJ/mol, minimum 0, NaN where unsampled",
        f"kT = {stats.kT:.6g} kJ/mol; kappa = {stats.kappa:.6g} kJ/mol/cv^2",
    ])


def read_fes(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(centres (n, d), free_energy (n,), count (n,))`` from ``fes.csv``."""
    header, data = read_csv(path)
    d = sum(h.startswith("cv") for h in header)
    return data[:, :d], data[:, d], data[:, d + 1]


def fes_interpolator(centres: np.ndarray, f: np.ndarray):
    """A function ξ (n, d) → F (n,) by linear interpolation on the grid (nearest outside)."""
    from scipy.interpolate import RegularGridInterpolator
    d = centres.shape[1]
    axes = [np.unique(centres[:, i]) for i in range(d)]
    grid_f = f.reshape([len(a) for a in axes])
    finite = np.isfinite(grid_f)
    if not finite.all():
        # fill unsampled bins with the highest sampled free energy (they get tiny weight)
        grid_f = np.where(finite, grid_f, np.nanmax(grid_f) if finite.any() else 0.0)
    interp = RegularGridInterpolator(axes, grid_f, bounds_error=False, fill_value=None, method="linear")

    def evaluate(xi):
        xi = np.asarray(xi, float).reshape(-1, d)
        clipped = np.column_stack([np.clip(xi[:, i], axes[i][0], axes[i][-1]) for i in range(d)])
        return interp(clipped)
    return evaluate
