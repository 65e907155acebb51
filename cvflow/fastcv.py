"""Fast evaluation of CVs inside the MD loop.

The TorchScript file is always the CV's definition. For a CV that cvflow exported (an
aligned MLP, recognised by its ``cvflow_format`` attribute) the values and gradients are
computed by a numba kernel: a closed-form Kabsch alignment through Horn's quaternion
method, with the derivative of the optimal rotation, and an analytic MLP forward and
backward pass. Any other TorchScript CV runs through PyTorch's autograd. Tests check
that both paths give the TorchScript values and gradients to 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from .arena import CV_SLOTS, JAC, POS, XI, f1, f2, f3, i1, i2

ACTIVATIONS = {"identity": 0, "tanh": 1, "softplus": 2, "relu": 3, "elu": 4}


class CVEvaluator:
    """Values and Jacobian of a CV at one frame.

    Attributes
    ----------
    n_atoms : int
        Number of atoms the CV takes.
    dim : int
        Number of CV components.
    particles : (k,) int array
        The atoms the CV depends on; ``jacobian`` returns rows for these only.
    """
    n_atoms: int
    dim: int
    particles: np.ndarray

    def __call__(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(values (d,), jacobian (d, k, 3))`` for positions ``(k, 3)`` in nm of ``particles``."""
        raise NotImplementedError

    def pack(self, arena):
        """Put this CV's arrays in ``arena`` (slots from ``CV_SLOTS``) and return its packed kernel.

        The kernel is a numba function ``kernel(fbuf, ibuf)`` that reads the positions in
        slot ``POS`` and writes the values in ``XI`` and the Jacobian in ``JAC``. ``None``
        (the default) means the CV is evaluated from Python and the bias copies its results in.
        """
        return None


def _check_shape(pos, k: int) -> None:
    """The numba kernels do not check bounds: a wrong shape must stop here, not corrupt memory."""
    if pos.shape != (k, 3) or pos.dtype != np.float64:
        raise ValueError(f"expected float64 positions of the CV's {k} particles, shape ({k}, 3); "
                         f"got {pos.dtype} {pos.shape}")


class TorchCV(CVEvaluator):
    """Any TorchScript CV, through autograd (slow: PyTorch's per-call cost)."""

    def __init__(self, module: torch.jit.ScriptModule, n_atoms: int, dtype=torch.float32):
        self.module = module
        self.n_atoms = n_atoms
        self.dtype = dtype
        self.particles = np.arange(n_atoms)
        x = torch.zeros((n_atoms, 3), dtype=dtype)
        self.dim = int(module(x).numel())

    def __call__(self, pos):
        x = torch.tensor(pos, dtype=self.dtype, requires_grad=True)
        y = self.module(x).reshape(-1)
        jac = np.empty((y.shape[0],) + pos.shape)
        for i in range(y.shape[0]):
            (g,) = torch.autograd.grad(y[i], x, retain_graph=i + 1 < y.shape[0], allow_unused=True)
            jac[i] = 0.0 if g is None else g.numpy()
        return y.detach().double().numpy(), jac


@dataclass
class AlignedMLPParams:
    """The numbers inside a cvflow-exported CV, in float64."""
    atom_indices: np.ndarray
    reference: np.ndarray
    align: bool
    components: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    weights: list
    biases: list
    activations: np.ndarray

    @classmethod
    def from_module(cls, m) -> "AlignedMLPParams":
        params = dict(m.encoder.named_parameters())
        n = len(params) // 2
        keys = sorted({k.split(".")[0] for k in params}, key=int)
        assert len(keys) == n
        return cls(
            atom_indices=m.features.atom_indices.numpy().astype(np.int64),
            reference=m.features.reference.double().numpy().copy(),
            align=bool(m.features.align),
            components=m.features.components.numpy().astype(np.int64),
            mean=m.mean.double().numpy().copy(),
            std=m.std.double().numpy().copy(),
            weights=[params[f"{k}.weight"].detach().double().numpy().copy() for k in keys],
            biases=[params[f"{k}.bias"].detach().double().numpy().copy() for k in keys],
            activations=np.array([ACTIVATIONS[a] for a in m.activations], dtype=np.int64),
        )


class FastAlignedMLP(CVEvaluator):
    """Numba evaluation of a cvflow aligned-MLP CV on its selected atoms only."""

    def __init__(self, params: AlignedMLPParams, n_atoms: int):
        self.p = params
        self.n_atoms = n_atoms
        self.particles = params.atom_indices
        self.dim = params.weights[-1].shape[0]
        self._theta = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(params.weights, params.biases)])
        self._shapes = np.array([w.shape for w in params.weights], dtype=np.int64)
        width = max(max(w.shape[0] for w in params.weights), len(params.components))
        nl = len(params.weights)
        k = len(self.particles)
        self._h = np.zeros((nl + 1, width))
        self._z = np.zeros((nl, width))
        self._g = np.zeros((2, self.dim * width))  # the backward pass's (dim × n) matrices, flat
        self._work = np.zeros((3, k, 3))
        self._values = np.zeros(self.dim)
        self._jac = np.zeros((self.dim, k, 3))

    def __call__(self, pos):
        _check_shape(pos, len(self.particles))
        p = self.p
        _aligned_mlp(pos, p.reference, p.align, p.components, p.mean, p.std, self._theta,
                     self._shapes, p.activations, self._h, self._z, self._g, self._work,
                     self._values, self._jac)
        return self._values, self._jac

    def pack(self, arena):
        p = self.p
        for i, a in enumerate((p.reference, np.array([int(p.align)]), p.components, p.mean, p.std, self._theta,
                               self._shapes, p.activations, self._h, self._z, self._g, self._work)):
            arena.add(CV_SLOTS + i, a)
        return aligned_mlp_packed


def cv_format(module) -> str | None:
    """The ``cvflow_format`` of a CV module (``aligned-mlp/1``, ``torsions/1``, ...), or None."""
    return str(module.cvflow_format) if hasattr(module, "cvflow_format") else None


def load_cv(path, n_atoms: int, fast: bool = True) -> CVEvaluator:
    """Load a TorchScript CV file; use the numba path when the file allows it."""
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    fmt = cv_format(module)
    if fast and fmt == "aligned-mlp/1":
        return FastAlignedMLP(AlignedMLPParams.from_module(module), n_atoms)
    if fast and fmt == "torsions/1":
        from .cvs import FastTorsions
        return FastTorsions(module.quads.numpy(), n_atoms)
    dtype = torch.float64 if fmt else torch.float32
    return TorchCV(module, n_atoms, dtype=dtype)


# ---------------------------------------------------------------------------------------
# numba kernels

@numba.njit(cache=True, fastmath=True)
def _act(code, x):
    if code == 1:
        # exp-based tanh: 2x faster than libm's here, exact to ~1e-16 absolute
        e = np.exp(-2.0 * abs(x))
        t = (1.0 - e) / (1.0 + e)
        return t if x >= 0 else -t
    if code == 2:
        return np.log1p(np.exp(-abs(x))) + max(x, 0.0)
    if code == 3:
        return max(x, 0.0)
    if code == 4:
        return x if x > 0 else np.expm1(x)
    return x


@numba.njit(cache=True, fastmath=True)
def _dact(code, x, y):
    """Derivative of the activation at pre-activation ``x`` with output ``y``."""
    if code == 1:
        return 1.0 - y * y
    if code == 2:
        return 1.0 / (1.0 + np.exp(-x))
    if code == 3:
        return 1.0 if x > 0 else 0.0
    if code == 4:
        return 1.0 if x > 0 else y + 1.0
    return 1.0


@numba.njit(cache=True, fastmath=True)
def jacobi_eigh4(a_in):
    """Eigen-decomposition of a symmetric 4×4 matrix by cyclic Jacobi rotations.

    Returns eigenvalues in ascending order and the eigenvectors as columns. LAPACK's
    ``eigh`` costs ~7 µs per call from numba on a matrix this small; this costs <1 µs.
    """
    a = a_in.copy()
    v = np.eye(4)
    for sweep in range(50):
        off = 0.0
        for p in range(3):
            for q in range(p + 1, 4):
                off += a[p, q] * a[p, q]
        if off < 1e-30 * (a[0, 0] ** 2 + a[1, 1] ** 2 + a[2, 2] ** 2 + a[3, 3] ** 2) + 1e-300:
            break
        for p in range(3):
            for q in range(p + 1, 4):
                apq = a[p, q]
                if abs(apq) < 1e-300:
                    continue
                theta = (a[q, q] - a[p, p]) / (2.0 * apq)
                t = (1.0 if theta >= 0 else -1.0) / (abs(theta) + np.sqrt(theta * theta + 1.0))
                c = 1.0 / np.sqrt(t * t + 1.0)
                s = t * c
                for r in range(4):
                    arp = a[r, p]
                    arq = a[r, q]
                    a[r, p] = c * arp - s * arq
                    a[r, q] = s * arp + c * arq
                for r in range(4):
                    apr = a[p, r]
                    aqr = a[q, r]
                    a[p, r] = c * apr - s * aqr
                    a[q, r] = s * apr + c * aqr
                for r in range(4):
                    vrp = v[r, p]
                    vrq = v[r, q]
                    v[r, p] = c * vrp - s * vrq
                    v[r, q] = s * vrp + c * vrq
    evals = np.empty(4)
    for i in range(4):
        evals[i] = a[i, i]
    order = np.argsort(evals)
    evecs = np.empty((4, 4))
    ev = np.empty(4)
    for j in range(4):
        ev[j] = evals[order[j]]
        for r in range(4):
            evecs[r, j] = v[r, order[j]]
    return ev, evecs


@numba.njit(cache=True, fastmath=True)
def quaternion_align(y, ref):
    """Horn's method: rotation Q (3×3) with Q @ y_i ≈ ref_i, plus what its derivative needs.

    Returns ``Q, q, evals, evecs`` where ``q`` is the top eigenvector of Horn's 4×4 matrix.
    """
    s = np.zeros((3, 3))
    for i in range(y.shape[0]):
        for a in range(3):
            for b in range(3):
                s[a, b] += y[i, a] * ref[i, b]
    sxx, sxy, sxz = s[0, 0], s[0, 1], s[0, 2]
    syx, syy, syz = s[1, 0], s[1, 1], s[1, 2]
    szx, szy, szz = s[2, 0], s[2, 1], s[2, 2]
    k = np.empty((4, 4))
    k[0, 0] = sxx + syy + szz
    k[0, 1] = k[1, 0] = syz - szy
    k[0, 2] = k[2, 0] = szx - sxz
    k[0, 3] = k[3, 0] = sxy - syx
    k[1, 1] = sxx - syy - szz
    k[1, 2] = k[2, 1] = sxy + syx
    k[1, 3] = k[3, 1] = szx + sxz
    k[2, 2] = -sxx + syy - szz
    k[2, 3] = k[3, 2] = syz + szy
    k[3, 3] = -sxx - syy + szz
    evals, evecs = jacobi_eigh4(k)
    q = evecs[:, 3].copy()
    q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
    r = np.empty((3, 3))
    r[0, 0] = q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3
    r[0, 1] = 2 * (q1 * q2 - q0 * q3)
    r[0, 2] = 2 * (q1 * q3 + q0 * q2)
    r[1, 0] = 2 * (q1 * q2 + q0 * q3)
    r[1, 1] = q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3
    r[1, 2] = 2 * (q2 * q3 - q0 * q1)
    r[2, 0] = 2 * (q1 * q3 - q0 * q2)
    r[2, 1] = 2 * (q2 * q3 + q0 * q1)
    r[2, 2] = q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3
    return r, q, evals, evecs


@numba.njit(cache=True, fastmath=True)
def _rotation_backward(gq_mat, q, evals, evecs):
    """Gradient wrt Horn's S matrix (3×3) given dF/dQ (3×3)."""
    q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
    g = gq_mat
    gq = np.zeros(4)
    # dQ/dq, row by row (see quaternion_align)
    gq[0] += g[0, 0] * 2 * q0 + g[0, 1] * -2 * q3 + g[0, 2] * 2 * q2
    gq[1] += g[0, 0] * 2 * q1 + g[0, 1] * 2 * q2 + g[0, 2] * 2 * q3
    gq[2] += g[0, 0] * -2 * q2 + g[0, 1] * 2 * q1 + g[0, 2] * 2 * q0
    gq[3] += g[0, 0] * -2 * q3 + g[0, 1] * -2 * q0 + g[0, 2] * 2 * q1
    gq[0] += g[1, 0] * 2 * q3 + g[1, 1] * 2 * q0 + g[1, 2] * -2 * q1
    gq[1] += g[1, 0] * 2 * q2 + g[1, 1] * -2 * q1 + g[1, 2] * -2 * q0
    gq[2] += g[1, 0] * 2 * q1 + g[1, 1] * 2 * q2 + g[1, 2] * 2 * q3
    gq[3] += g[1, 0] * 2 * q0 + g[1, 1] * -2 * q3 + g[1, 2] * 2 * q2
    gq[0] += g[2, 0] * -2 * q2 + g[2, 1] * 2 * q1 + g[2, 2] * 2 * q0
    gq[1] += g[2, 0] * 2 * q3 + g[2, 1] * 2 * q0 + g[2, 2] * -2 * q1
    gq[2] += g[2, 0] * -2 * q0 + g[2, 1] * 2 * q3 + g[2, 2] * -2 * q2
    gq[3] += g[2, 0] * 2 * q1 + g[2, 1] * 2 * q2 + g[2, 2] * 2 * q3
    # dq = -P dK q, P = sum_{j<3} v_j v_j^T / (lam_j - lam_top)
    pg = np.zeros(4)
    for j in range(3):
        c = 0.0
        for r in range(4):
            c += evecs[r, j] * gq[r]
        c /= evals[j] - evals[3]
        for r in range(4):
            pg[r] += c * evecs[r, j]
    gk = np.empty((4, 4))
    for a in range(4):
        for b in range(4):
            gk[a, b] = -pg[a] * q[b]
    gs = np.zeros((3, 3))
    # adjoint of S -> K
    g00, g11, g22, g33 = gk[0, 0], gk[1, 1], gk[2, 2], gk[3, 3]
    gs[0, 0] = g00 + g11 - g22 - g33
    gs[1, 1] = g00 - g11 + g22 - g33
    gs[2, 2] = g00 - g11 - g22 + g33
    a01 = gk[0, 1] + gk[1, 0]
    a02 = gk[0, 2] + gk[2, 0]
    a03 = gk[0, 3] + gk[3, 0]
    a12 = gk[1, 2] + gk[2, 1]
    a13 = gk[1, 3] + gk[3, 1]
    a23 = gk[2, 3] + gk[3, 2]
    gs[1, 2] = a01 + a23
    gs[2, 1] = -a01 + a23
    gs[2, 0] = a02 + a13
    gs[0, 2] = -a02 + a13
    gs[0, 1] = a03 + a12
    gs[1, 0] = -a03 + a12
    return gs


@numba.njit(cache=True, fastmath=True)
def _aligned_mlp(pos, ref, align, comps, mean, std, theta, shapes, acts, h, z, g, work, values, jac):
    """Values and Jacobian (d, k, 3) of the aligned MLP; all arrays preallocated."""
    k = pos.shape[0]
    y = work[0]
    a = work[1]
    gy = work[2]
    if align:
        c0 = c1 = c2 = 0.0
        for i in range(k):
            c0 += pos[i, 0]
            c1 += pos[i, 1]
            c2 += pos[i, 2]
        for i in range(k):
            y[i, 0] = pos[i, 0] - c0 / k
            y[i, 1] = pos[i, 1] - c1 / k
            y[i, 2] = pos[i, 2] - c2 / k
        rot, q, evals, evecs = quaternion_align(y, ref)
        for i in range(k):
            for r in range(3):
                a[i, r] = rot[r, 0] * y[i, 0] + rot[r, 1] * y[i, 1] + rot[r, 2] * y[i, 2]
    else:
        rot = np.eye(3)
        q = np.zeros(4)
        evals = np.zeros(4)
        evecs = np.zeros((4, 4))
        for i in range(k):
            for r in range(3):
                y[i, r] = pos[i, r]
                a[i, r] = pos[i, r]
    m = comps.shape[0]
    for j in range(m):
        c = comps[j]
        h[0, j] = (a[c // 3, c % 3] - mean[j]) / std[j]
    nl = shapes.shape[0]
    # forward pass, one BLAS gemv per layer
    off = 0
    for layer in range(nl):
        nout, nin = shapes[layer, 0], shapes[layer, 1]
        boff = off + nout * nin
        zl = z[layer, :nout]
        np.dot(theta[off:boff].reshape((nout, nin)), h[layer, :nin], zl)
        for o in range(nout):
            zl[o] += theta[boff + o]
            h[layer + 1, o] = _act(acts[layer], zl[o])
        off = boff + nout
    dim = shapes[nl - 1, 0]
    # backward pass for all outputs at once: G (dim × n) = dξ/dh_layer, one BLAS gemm per layer
    cur = g[0][:dim * dim].reshape((dim, dim))
    for d in range(dim):
        values[d] = h[nl, d]
        for o in range(dim):
            cur[d, o] = _dact(acts[nl - 1], z[nl - 1, o], h[nl, o]) if d == o else 0.0
    buf = 0
    off = theta.shape[0]
    for layer in range(nl - 1, -1, -1):
        nout, nin = shapes[layer, 0], shapes[layer, 1]
        off -= nout * nin + nout
        nxt = g[1 - buf][:dim * nin].reshape((dim, nin))
        np.dot(cur, theta[off:off + nout * nin].reshape((nout, nin)), nxt)
        if layer > 0:
            for i in range(nin):
                di = _dact(acts[layer - 1], z[layer - 1, i], h[layer, i])
                for d in range(dim):
                    nxt[d, i] *= di
        cur = nxt
        buf = 1 - buf
    for d in range(dim):
        # gradient wrt aligned coordinates, stored in a
        for i in range(k):
            for r in range(3):
                a[i, r] = 0.0
        for j in range(m):
            c = comps[j]
            a[c // 3, c % 3] += cur[d, j] / std[j]
        if align:
            # a_i = Q y_i: direct term Q^T g_i, rotation term through Horn's S = y^T ref
            gq_mat = np.zeros((3, 3))
            for i in range(k):
                for r in range(3):
                    gy[i, r] = a[i, 0] * rot[0, r] + a[i, 1] * rot[1, r] + a[i, 2] * rot[2, r]
                    for s in range(3):
                        gq_mat[r, s] += a[i, r] * y[i, s]
            gs = _rotation_backward(gq_mat, q, evals, evecs)
            m0 = m1 = m2 = 0.0
            for i in range(k):
                for r in range(3):
                    gy[i, r] += ref[i, 0] * gs[r, 0] + ref[i, 1] * gs[r, 1] + ref[i, 2] * gs[r, 2]
                m0 += gy[i, 0]
                m1 += gy[i, 1]
                m2 += gy[i, 2]
            for i in range(k):
                jac[d, i, 0] = gy[i, 0] - m0 / k
                jac[d, i, 1] = gy[i, 1] - m1 / k
                jac[d, i, 2] = gy[i, 2] - m2 / k
        else:
            for i in range(k):
                for r in range(3):
                    jac[d, i, r] = a[i, r]
    return values


@numba.njit(cache=True)
def aligned_mlp_packed(fb, ib):
    """:func:`_aligned_mlp` on the arrays of an arena (see :meth:`FastAlignedMLP.pack`)."""
    s = CV_SLOTS
    _aligned_mlp(f2(fb, ib, POS), f2(fb, ib, s), i1(ib, s + 1)[0] != 0, i1(ib, s + 2), f1(fb, ib, s + 3),
                 f1(fb, ib, s + 4), f1(fb, ib, s + 5), i2(ib, s + 6), i1(ib, s + 7), f2(fb, ib, s + 8),
                 f2(fb, ib, s + 9), f2(fb, ib, s + 10), f3(fb, ib, s + 11), f1(fb, ib, XI), f3(fb, ib, JAC))
