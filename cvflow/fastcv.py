"""Fast evaluation of CVs inside the MD loop.

The TorchScript file is always the CV's definition. For a CV that cvflow exported (an
aligned MLP, recognised by its ``cvflow_format`` attribute) the values and gradients are
computed by a numba kernel: a closed-form Kabsch alignment through Horn's quaternion
method, with the derivative of the optimal rotation, and an analytic MLP forward and
backward pass. Any other TorchScript CV runs through PyTorch's autograd. Tests check
that both paths give the TorchScript values and gradients to 1e-6.

The kernels are compiled without ``fastmath``: with it, a kernel compiled in the running
process and the same kernel loaded from numba's cache gave gradients that differed in the
last bits (measured: 5.365693777976988 against ...984), and that difference grew, through
the chaos of MD, into another trajectory for the same seed. Without it both agree to the
bit, at the same speed (scripts/bench.py, alanine dipeptide: 0.59 against 0.60 of
OpenMM alone for the neural CV).
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
        self._small = np.zeros((4, 4))
        self._values = np.zeros(self.dim)
        self._jac = np.zeros((self.dim, k, 3))

    def __call__(self, pos):
        _check_shape(pos, len(self.particles))
        p = self.p
        _aligned_mlp(pos, p.reference, p.align, p.components, p.mean, p.std, self._theta,
                     self._shapes, p.activations, self._h, self._z, self._g, self._work,
                     self._small, self._values, self._jac)
        return self._values, self._jac

    def pack(self, arena):
        p = self.p
        for i, a in enumerate((p.reference, np.array([int(p.align)]), p.components, p.mean, p.std, self._theta,
                               self._shapes, p.activations, self._h, self._z, self._g, self._work,
                               self._small)):
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

@numba.njit(cache=True)
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


@numba.njit(cache=True)
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


@numba.njit(cache=True)
def _det3(m, r0, r1, r2, c0, c1, c2):
    return (m[r0, c0] * (m[r1, c1] * m[r2, c2] - m[r1, c2] * m[r2, c1])
            - m[r0, c1] * (m[r1, c0] * m[r2, c2] - m[r1, c2] * m[r2, c0])
            + m[r0, c2] * (m[r1, c0] * m[r2, c1] - m[r1, c1] * m[r2, c0]))


@numba.njit(cache=True)
def _minor_rows(j):
    """The three indices of 0..3 other than ``j``."""
    if j == 0:
        return 1, 2, 3
    if j == 1:
        return 0, 2, 3
    if j == 2:
        return 0, 1, 3
    return 0, 1, 2


@numba.njit(cache=True)
def _cofactor(m, i, j):
    """Cofactor (i, j) of a 4×4 matrix."""
    r0, r1, r2 = _minor_rows(i)
    c0, c1, c2 = _minor_rows(j)
    v = _det3(m, r0, r1, r2, c0, c1, c2)
    return v if (i + j) % 2 == 0 else -v


@numba.njit(cache=True)
def horn_rotation(y, ref, rot, m):
    """Optimal rotation ``rot`` (3×3) with ``rot @ y_i`` ≈ ``ref_i`` for centred ``y`` and ``ref``.

    Horn's quaternion method, solved as in QCP (Theobald, Acta Cryst. A 61, 478, 2005): the
    largest eigenvalue of Horn's traceless 4×4 matrix K by Newton's method on its
    characteristic polynomial, started from an upper bound (so it converges from above,
    monotonically), then the eigenvector as the largest column of adj(K − λI). ``m`` is a
    4×4 scratch array. Returns λ_max. About ten times faster than a Jacobi or LAPACK
    eigen-decomposition of K, and the derivative of the rotation does not need the other
    eigenvectors (see :func:`_aligned_mlp`).
    """
    sxx = sxy = sxz = syx = syy = syz = szx = szy = szz = 0.0
    g = 0.0
    for i in range(y.shape[0]):
        y0, y1, y2 = y[i, 0], y[i, 1], y[i, 2]
        r0, r1, r2 = ref[i, 0], ref[i, 1], ref[i, 2]
        sxx += y0 * r0
        sxy += y0 * r1
        sxz += y0 * r2
        syx += y1 * r0
        syy += y1 * r1
        syz += y1 * r2
        szx += y2 * r0
        szy += y2 * r1
        szz += y2 * r2
        g += y0 * y0 + y1 * y1 + y2 * y2 + r0 * r0 + r1 * r1 + r2 * r2
    m[0, 0] = sxx + syy + szz
    m[0, 1] = m[1, 0] = syz - szy
    m[0, 2] = m[2, 0] = szx - sxz
    m[0, 3] = m[3, 0] = sxy - syx
    m[1, 1] = sxx - syy - szz
    m[1, 2] = m[2, 1] = sxy + syx
    m[1, 3] = m[3, 1] = szx + sxz
    m[2, 2] = -sxx + syy - szz
    m[2, 3] = m[3, 2] = syz + szy
    m[3, 3] = -sxx - syy + szz
    # characteristic polynomial of a traceless K: λ⁴ + c2 λ² + c1 λ + c0
    tr2 = 0.0
    tr3 = 0.0
    for a in range(4):
        for b in range(4):
            tr2 += m[a, b] * m[a, b]
            kk = 0.0
            for c in range(4):
                kk += m[b, c] * m[c, a]
            tr3 += m[a, b] * kk
    c2 = -0.5 * tr2
    c1 = -tr3 / 3.0
    c0 = (m[0, 0] * _det3(m, 1, 2, 3, 1, 2, 3) - m[0, 1] * _det3(m, 1, 2, 3, 0, 2, 3)
          + m[0, 2] * _det3(m, 1, 2, 3, 0, 1, 3) - m[0, 3] * _det3(m, 1, 2, 3, 0, 1, 2))
    lam = 0.5 * g  # λ_max ≤ (Σ|y|² + Σ|ref|²)/2
    tol = 1e-15 * lam + 1e-300
    for _ in range(100):
        l2 = lam * lam
        p = (l2 + c2) * l2 + c1 * lam + c0
        dp = (4.0 * l2 + 2.0 * c2) * lam + c1
        if dp == 0.0:
            break
        step = p / dp
        lam -= step
        if abs(step) <= tol:
            break
    for a in range(4):
        m[a, a] -= lam
    # adj(K − λI) ≈ (Π other eigenvalue gaps) q qᵀ: take the column with the largest diagonal
    best, jbest = -1.0, 0
    for j in range(4):
        c = abs(_cofactor(m, j, j))
        if c > best:
            best, jbest = c, j
    q0, q1, q2, q3 = (_cofactor(m, 0, jbest), _cofactor(m, 1, jbest), _cofactor(m, 2, jbest),
                      _cofactor(m, 3, jbest))
    norm = q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3
    if norm == 0.0:  # every point at the centre: the identity
        q0, norm = 1.0, 1.0
    inv = 1.0 / np.sqrt(norm)
    q0, q1, q2, q3 = q0 * inv, q1 * inv, q2 * inv, q3 * inv
    rot[0, 0] = q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3
    rot[0, 1] = 2 * (q1 * q2 - q0 * q3)
    rot[0, 2] = 2 * (q1 * q3 + q0 * q2)
    rot[1, 0] = 2 * (q1 * q2 + q0 * q3)
    rot[1, 1] = q0 * q0 - q1 * q1 + q2 * q2 - q3 * q3
    rot[1, 2] = 2 * (q2 * q3 - q0 * q1)
    rot[2, 0] = 2 * (q1 * q3 - q0 * q2)
    rot[2, 1] = 2 * (q2 * q3 + q0 * q1)
    rot[2, 2] = q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3
    return lam


@numba.njit(cache=True)
def _aligned_mlp(pos, ref, align, comps, mean, std, theta, shapes, acts, h, z, g, work, small, values, jac):
    """Values and Jacobian (d, k, 3) of the aligned MLP; every array preallocated.

    ``small`` is a (4, 4) scratch array: Horn's matrix, then the rotation in its top-left 3×3.

    The derivative of the alignment: with a_i = Q y_i for centred positions y and g_i =
    ∂ξ/∂a_i, the optimal Q is torque-free, Σ a_i × ref_i = 0. Differentiating that
    condition gives Q's rotation ω = A⁻¹ Σ (Q dy_i) × ref_i with A = tr(C) I − C and
    C = Σ a_i ref_iᵀ (symmetric at the optimum), so ∂ξ/∂y_i = Qᵀ (g_i + ref_i × u) with
    u = A⁻¹ Σ a_i × g_i; centring then removes the mean over atoms.
    """
    k = pos.shape[0]
    y = work[0]
    a = work[1]
    gy = work[2]
    rot = small[0:3, 0:3]
    if align:
        c0 = c1 = c2 = 0.0
        for i in range(k):
            c0 += pos[i, 0]
            c1 += pos[i, 1]
            c2 += pos[i, 2]
        c0 /= k
        c1 /= k
        c2 /= k
        for i in range(k):
            y[i, 0] = pos[i, 0] - c0
            y[i, 1] = pos[i, 1] - c1
            y[i, 2] = pos[i, 2] - c2
        horn_rotation(y, ref, rot, small)
        cxx = cxy = cxz = cyy = cyz = czz = 0.0
        for i in range(k):
            for r in range(3):
                a[i, r] = rot[r, 0] * y[i, 0] + rot[r, 1] * y[i, 1] + rot[r, 2] * y[i, 2]
            cxx += a[i, 0] * ref[i, 0]
            cyy += a[i, 1] * ref[i, 1]
            czz += a[i, 2] * ref[i, 2]
            cxy += 0.5 * (a[i, 0] * ref[i, 1] + a[i, 1] * ref[i, 0])
            cxz += 0.5 * (a[i, 0] * ref[i, 2] + a[i, 2] * ref[i, 0])
            cyz += 0.5 * (a[i, 1] * ref[i, 2] + a[i, 2] * ref[i, 1])
        tr = cxx + cyy + czz
        # A = tr(C) I − C, symmetric; its inverse by cofactors
        a00, a11, a22, a01, a02, a12 = tr - cxx, tr - cyy, tr - czz, -cxy, -cxz, -cyz
        i00 = a11 * a22 - a12 * a12
        i01 = a02 * a12 - a01 * a22
        i02 = a01 * a12 - a02 * a11
        det = a00 * i00 + a01 * i01 + a02 * i02
        det = 1.0 / det if det != 0.0 else 0.0
        ai00, ai01, ai02 = i00 * det, i01 * det, i02 * det
        ai11 = (a00 * a22 - a02 * a02) * det
        ai12 = (a01 * a02 - a00 * a12) * det
        ai22 = (a00 * a11 - a01 * a01) * det
    else:
        ai00 = ai01 = ai02 = ai11 = ai12 = ai22 = 0.0
        for i in range(k):
            for r in range(3):
                y[i, r] = pos[i, r]
                a[i, r] = pos[i, r]
    m = comps.shape[0]
    for j in range(m):
        c = comps[j]
        h[0, j] = (a[c // 3, c % 3] - mean[j]) / std[j]
    nl = shapes.shape[0]
    # forward pass. Plain loops over 1-D slices, which LLVM vectorises: a BLAS call per
    # layer or per row costs more than the arithmetic on layers this small.
    off = 0
    for layer in range(nl):
        nout, nin = shapes[layer, 0], shapes[layer, 1]
        boff = off + nout * nin
        act = acts[layer]
        hin = h[layer, :nin]
        for o in range(nout):
            w = theta[off + o * nin:off + (o + 1) * nin]
            acc = 0.0
            for i in range(nin):
                acc += w[i] * hin[i]
            acc += theta[boff + o]
            z[layer, o] = acc
            h[layer + 1, o] = _act(act, acc)
        off = boff + nout
    dim = shapes[nl - 1, 0]
    # backward pass for all outputs at once: G (dim × n) = dξ/dh_layer
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
        for d in range(dim):
            row = nxt[d]
            row[:] = 0.0
            for o in range(nout):
                c = cur[d, o]
                w = theta[off + o * nin:off + (o + 1) * nin]
                for i in range(nin):
                    row[i] += c * w[i]
        if layer > 0:
            for i in range(nin):
                di = _dact(acts[layer - 1], z[layer - 1, i], h[layer, i])
                for d in range(dim):
                    nxt[d, i] *= di
        cur = nxt
        buf = 1 - buf
    for d in range(dim):
        # gradient wrt aligned coordinates, stored in gy
        for i in range(k):
            gy[i, 0] = gy[i, 1] = gy[i, 2] = 0.0
        for j in range(m):
            c = comps[j]
            gy[c // 3, c % 3] += cur[d, j] / std[j]
        if align:
            t0 = t1 = t2 = 0.0
            for i in range(k):
                t0 += a[i, 1] * gy[i, 2] - a[i, 2] * gy[i, 1]
                t1 += a[i, 2] * gy[i, 0] - a[i, 0] * gy[i, 2]
                t2 += a[i, 0] * gy[i, 1] - a[i, 1] * gy[i, 0]
            u0 = ai00 * t0 + ai01 * t1 + ai02 * t2
            u1 = ai01 * t0 + ai11 * t1 + ai12 * t2
            u2 = ai02 * t0 + ai12 * t1 + ai22 * t2
            m0 = m1 = m2 = 0.0
            for i in range(k):
                g0 = gy[i, 0] + ref[i, 1] * u2 - ref[i, 2] * u1
                g1 = gy[i, 1] + ref[i, 2] * u0 - ref[i, 0] * u2
                g2 = gy[i, 2] + ref[i, 0] * u1 - ref[i, 1] * u0
                j0 = rot[0, 0] * g0 + rot[1, 0] * g1 + rot[2, 0] * g2
                j1 = rot[0, 1] * g0 + rot[1, 1] * g1 + rot[2, 1] * g2
                j2 = rot[0, 2] * g0 + rot[1, 2] * g1 + rot[2, 2] * g2
                jac[d, i, 0] = j0
                jac[d, i, 1] = j1
                jac[d, i, 2] = j2
                m0 += j0
                m1 += j1
                m2 += j2
            m0 /= k
            m1 /= k
            m2 /= k
            for i in range(k):
                jac[d, i, 0] -= m0
                jac[d, i, 1] -= m1
                jac[d, i, 2] -= m2
        else:
            for i in range(k):
                for r in range(3):
                    jac[d, i, r] = gy[i, r]
    return values


@numba.njit(cache=True)
def aligned_mlp_packed(fb, ib):
    """:func:`_aligned_mlp` on the arrays of an arena (see :meth:`FastAlignedMLP.pack`)."""
    s = CV_SLOTS
    _aligned_mlp(f2(fb, ib, POS), f2(fb, ib, s), i1(ib, s + 1)[0] != 0, i1(ib, s + 2), f1(fb, ib, s + 3),
                 f1(fb, ib, s + 4), f1(fb, ib, s + 5), i2(ib, s + 6), i1(ib, s + 7), f2(fb, ib, s + 8),
                 f2(fb, ib, s + 9), f2(fb, ib, s + 10), f3(fb, ib, s + 11), f2(fb, ib, s + 12), f1(fb, ib, XI),
                 f3(fb, ib, JAC))
