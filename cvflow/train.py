"""Weighted training with early stopping on contiguous validation blocks.

The loss is the weighted mean Σ w‖x − x̂‖² / Σ w (weights not squared). Minibatches are
drawn uniformly (shuffled frames). The weights are scaled to mean one over the training
set and each batch's loss is Σ_batch w‖x − x̂‖² / batch size, an unbiased estimate of the
full loss (a batch's own Σw in the denominator would be a ratio estimator, biased when the
weights are uneven). We chose this over multinomial resampling by weight because it keeps
every frame and adds no resampling noise.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .models import build_model
from .system import usable_cores
from .stop import check_stop


class TrainingError(RuntimeError):
    """NaN loss or weights during training."""


@dataclass
class TrainResult:
    model: torch.nn.Module
    mean: np.ndarray
    std: np.ndarray
    history: list = field(default_factory=list)  # (epoch, train_loss, val_loss)
    best_val: float = math.inf
    epochs_run: int = 0
    start_losses: list = field(default_factory=list)  # best validation loss of each start (model.restarts)


def save_result(result: TrainResult, path) -> None:
    """A trained network's parameters and input normalisation (``model.pt``): what a warm
    start (``model.warm_start``) of the next iteration, or of a resumed run, starts from."""
    from . import artifacts as art
    state = {"state_dict": result.model.state_dict(), "mean": torch.from_numpy(np.asarray(result.mean)),
             "std": torch.from_numpy(np.asarray(result.std)), "best_val": result.best_val,
             "epochs_run": result.epochs_run}
    with art.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_result(path, model_cfg) -> TrainResult:
    """The :class:`TrainResult` written by :func:`save_result` (``model_cfg``: the network it
    was built with; a mismatch raises :class:`TrainingError` naming the file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a cvflow model.pt
        raise TrainingError(f"{path}: cannot be read as a saved network ({type(e).__name__})") from None
    model = build_model(model_cfg, int(state["mean"].numel()))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as e:
        raise TrainingError(f"{path}: the saved network does not match the config's model "
                            f"({str(e).splitlines()[0]})") from None
    return TrainResult(model.eval(), state["mean"].numpy(), state["std"].numpy(),
                       best_val=float(state["best_val"]), epochs_run=int(state["epochs_run"]))


def block_split(n: int, validation_fraction: float, rng: np.random.Generator, n_blocks: int = 10):
    """Indices (train, validation): whole contiguous blocks of time go to validation."""
    n_blocks = max(2, min(n_blocks, n))
    edges = np.linspace(0, n, n_blocks + 1).astype(int)
    n_val = max(1, int(round(validation_fraction * n_blocks)))
    val_blocks = set(rng.choice(n_blocks, size=n_val, replace=False).tolist())
    val = np.concatenate([np.arange(edges[b], edges[b + 1]) for b in sorted(val_blocks)])
    train = np.concatenate([np.arange(edges[b], edges[b + 1]) for b in range(n_blocks) if b not in val_blocks])
    return train, val


def weighted_stats(x: np.ndarray, w: np.ndarray, scaling: str = "feature"):
    """Weighted mean and scale of the features. ``feature``: each feature's own standard
    deviation; ``global``: one scale for all (the root mean square of those), which keeps
    the relative sizes of the fluctuations, i.e. the geometry of Cartesian features."""
    w = w / w.sum()
    mean = (w[:, None] * x).sum(0)
    std = np.sqrt((w[:, None] * (x - mean) ** 2).sum(0))
    if scaling == "global":
        std = np.full_like(std, np.sqrt(np.mean(std ** 2)))
    return mean, np.where(std > 1e-8, std, 1.0)


class FusedAdam:
    """``torch.optim.Adam(fused=True)`` without its per-step Python: the same two kernels
    (the step counters' increment and ``torch._fused_adam_``) on the same state, so the
    parameters are bit-identical to it (``tests/test_models.py`` holds the two to the bit),
    with one step count for all the parameters while their counts are equal.
    At the paper's size (30-40-2-40-30, batch 512) torch's wrapper spends about 80 µs of a
    700-µs step in Python: grouping the tensors, reading the state dicts, the hooks."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # one step count for every parameter while they are all equal (each step updates
        # them all): one increment instead of torch's per-parameter ones (``_foreach_add_``
        # on eight zero-dimensional tensors costs about 35 µs here); per-parameter counts
        # from the first step that skips a parameter on
        self._shared = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else None)
        self._own: list[torch.Tensor] | None = None
        self.kw = dict(amsgrad=False, lr=float(lr), beta1=float(betas[0]), beta2=float(betas[1]),
                       weight_decay=float(weight_decay), eps=float(eps), maximize=False,
                       grad_scale=None, found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        # as torch's: a parameter without a gradient this step is left alone, its count too
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        if self._own is None:
            if len(live) == len(self.params):
                self._shared.add_(1)
                torch._fused_adam_(self.params, [p.grad for p in self.params], self.exp_avgs, self.exp_avg_sqs,
                                   [], [self._shared] * len(self.params), **self.kw)
                return
            self._own = [self._shared.clone() for _ in self.params]
        pick = (lambda xs: xs) if len(live) == len(self.params) else (lambda xs: [xs[i] for i in live])
        steps = pick(self._own)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(pick(self.params), [p.grad for p in pick(self.params)], pick(self.exp_avgs),
                           pick(self.exp_avg_sqs), [], steps, **self.kw)

    @property
    def steps(self) -> list:
        """Each parameter's step count (zero-dimensional tensors, as torch's Adam keeps them)."""
        return self._own if self._own is not None else [self._shared] * len(self.params)


def _adam(model, cfg):
    """Adam, fused into one kernel per step where this torch build has it (CPU since 2.4):
    :class:`FusedAdam` where its kernel runs (tried once on two one-element tensors on the
    parameters' device), else torch's."""
    kw = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    params = list(model.parameters())
    if params and all(p.device == params[0].device and p.dtype == torch.float32 for p in params):
        try:
            probes = [torch.zeros(1, device=params[0].device, requires_grad=True) for _ in range(2)]
            for probe in probes:  # two: the shared step count is passed for each
                probe.grad = torch.ones_like(probe)
            FusedAdam(probes, **kw).step()
            return FusedAdam(params, **kw)
        except (AttributeError, RuntimeError, TypeError, NotImplementedError):
            pass
    try:
        return torch.optim.Adam(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, **kw)


def training_device(setting: str = "auto") -> torch.device:
    """``model.device`` resolved: ``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def train_model(x: np.ndarray, w: np.ndarray | None, model_cfg, seed: int, progress=None,
                label: str = "training", extra: np.ndarray | None = None, extra_weight: float = 0.0,
                init: "TrainResult | None" = None) -> TrainResult:
    """Train a model (``model_cfg.kind``) on features ``x`` (n, m) with weights ``w``: a fresh
    one, or with ``init`` (a :class:`TrainResult` of the same architecture) one that starts
    from those parameters and keeps that model's input normalisation (warm start).

    ``extra`` (n_extra, m): frames that the loss adds with weight ``extra_weight`` (the
    transition states): L = L(x, w) + extra_weight · mean ℓ(extra). Each minibatch carries
    a random quarter-batch of them; they are normalised with the data's mean and scale,
    and the validation loss includes their term over all of them.

    The networks train on ``model_cfg.device`` (:func:`training_device`); the minibatch
    order and the transition-state picks are drawn on the CPU, so they are the same on
    every device, and the trained model is returned on the CPU.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    if not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise TrainingError(f"{label}: weights are not finite and positive")
    if not np.all(np.isfinite(x)):
        raise TrainingError(f"{label}: features contain non-finite values")
    rng = np.random.default_rng(seed)
    torch_seed = int(rng.integers(2**31))
    if model_cfg.threads:
        torch.set_num_threads(model_cfg.threads)
    if init is not None:
        mean, std = init.mean, init.std
    else:
        mean, std = weighted_stats(x, w, model_cfg.scaling)
    xn = ((x - mean) / std).astype(np.float32)
    tr, va = block_split(n, model_cfg.validation_fraction, rng)
    if w[tr].sum() <= 0 or w[va].sum() <= 0:
        raise TrainingError(f"{label}: all the weight lies in the {'validation' if w[tr].sum() <= 0 else 'training'} "
                            "blocks; the reweighted data are too few to train on")
    # mean one over each set: the batch loss Σ w l / n is then unbiased for Σ w l / Σ w
    dev = training_device(getattr(model_cfg, "device", "cpu"))
    xt, wt = torch.from_numpy(xn[tr]).to(dev), torch.from_numpy((w[tr] / w[tr].mean()).astype(np.float32)).to(dev)
    xv, wv = torch.from_numpy(xn[va]).to(dev), torch.from_numpy((w[va] / w[va].mean()).astype(np.float32)).to(dev)
    has_extra = extra is not None and len(extra) > 0 and extra_weight > 0
    if has_extra:
        extra = np.asarray(extra, np.float64)
        if not np.all(np.isfinite(extra)):
            raise TrainingError(f"{label}: transition-state features contain non-finite values")
        xe = torch.from_numpy(((extra - mean) / std).astype(np.float32)).to(dev)
        ones_e = torch.ones(len(xe), device=dev)
        n_e = min(len(xe), max(1, model_cfg.batch_size // 4))
    else:
        xe = ones_e = None
        n_e = 0
    batch_seed = int(rng.integers(2**31))
    # model.restarts: several starts on the same training/validation split, the one with the
    # lowest validation loss kept (as k-means keeps its best of n_init); start 1 draws the
    # same numbers as a single start. A warm start has one start: the network it starts from.
    starts = 1 if init is not None else model_cfg.restarts
    best, losses = None, []
    for r in range(starts):
        if r:
            torch_seed, batch_seed = (int(v) for v in np.random.SeedSequence([seed, r]).generate_state(2) % 2**31)
        torch.manual_seed(torch_seed)
        model = build_model(model_cfg, x.shape[1])
        if init is not None:
            model.load_state_dict(init.model.state_dict())
        step = progress if progress is None or starts == 1 else (
            lambda e, n, tl, vl, r=r: progress(r * n + e, starts * n, tl, vl))
        res = _fit(model.to(dev), model_cfg, xt, wt, xv, wv, (xe, ones_e, n_e, extra_weight) if has_extra else None,
                   batch_seed, step, label if starts == 1 else f"{label}, start {r + 1} of {starts}", mean, std)
        losses.append(res.best_val)
        if best is None or res.best_val < best.best_val:
            best = res
    best.start_losses = losses
    return best


def _fit(model, model_cfg, xt, wt, xv, wv, extra, batch_seed: int, progress, label: str,
         mean: np.ndarray, std: np.ndarray) -> TrainResult:
    """One start of :func:`train_model`: Adam on minibatches of (xt, wt), early stopping on
    the validation loss over (xv, wv); ``extra``: (frames, ones, frames per batch, weight)
    of the transition states, or None. The best epoch's network, on the CPU, with the
    input normalisation (mean, std) it was trained under."""
    dev = xt.device
    has_extra = extra is not None
    if has_extra:
        xe, ones_e, n_e, extra_weight = extra
    opt = _adam(model, model_cfg)
    best_state, best_val, bad = None, math.inf, 0
    history = []
    bs = model_cfg.batch_size
    gen = torch.Generator().manual_seed(batch_seed)
    epoch = 0
    for epoch in range(1, model_cfg.epochs + 1):
        check_stop(f"{label}, epoch {epoch}")  # SIGTERM/Ctrl-C: the stage is redone on --resume
        model.train()
        model.start_epoch(epoch, model_cfg.epochs)
        # one gather per epoch, then contiguous minibatch views: cheaper than a gather per
        # minibatch; the loss sum stays a tensor, read once per epoch (no sync per step)
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        xs, ws = xt[perm], wt[perm]
        tot = torch.zeros((), device=dev)
        for i in range(0, len(xt), bs):
            xb, wb = xs[i:i + bs], ws[i:i + bs]
            if has_extra:
                # one forward pass over batch + extra frames: weights that make Σ w'ℓ / n'
                # = Σ_b wℓ / n_b + extra_weight · Σ_e ℓ / n_e
                pick = torch.randint(len(xe), (n_e,), generator=gen).to(dev)
                n_all = len(xb) + n_e
                xb = torch.cat([xb, xe[pick]])
                wb = torch.cat([wb * (n_all / (n_all - n_e)),
                                torch.full((n_e,), extra_weight * n_all / n_e, device=dev)])
            loss = model.loss(xb, wb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += loss.detach() * (len(wb) - (n_e if has_extra else 0))
        train_loss = float(tot) / len(xt)
        model.eval()
        with torch.no_grad():
            val_loss = float(model.loss(xv, wv))
            if has_extra:
                val_loss += extra_weight * float(model.loss(xe, ones_e))
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingError(f"{label}: loss became NaN at epoch {epoch}")
        history.append((epoch, train_loss, val_loss))
        if progress is not None:
            progress(epoch, model_cfg.epochs, train_loss, val_loss)
        if not math.isfinite(best_val) or val_loss < best_val - 1e-7 * abs(best_val):
            best_val, bad = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch > model.annealing_epochs:  # a schedule still changing the objective: no early stop
            bad += 1
            if bad >= model_cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    return TrainResult(model, mean, std, history, best_val, epoch)


def encode(result: TrainResult, x: np.ndarray) -> np.ndarray:
    """The CV (bottleneck) of a trained model on features ``x`` (n, m), in float64."""
    import copy
    enc = copy.deepcopy(result.model.encoder).double().eval()
    with torch.no_grad():
        return enc(torch.from_numpy((np.asarray(x, np.float64) - result.mean) / result.std)).numpy()


def bootstrap_member(x: np.ndarray, w: np.ndarray, seed: int, model_cfg, label: str = "bootstrap",
                     extra: np.ndarray | None = None, extra_weight: float = 0.0, init: TrainResult | None = None):
    """Train one bootstrap network (from ``init`` when given, as the iteration's own network
    was); returns its encoder as a picklable function features → CV."""
    return functools.partial(encode, train_model(x, w, model_cfg, seed, label=label, extra=extra,
                                                 extra_weight=extra_weight, init=init))


def bootstrap_workers(setting, repeats: int, n_values: int) -> int:
    """Processes for the bootstrap trainings: ``setting`` (an int or "auto") resolved."""
    if setting != "auto":
        return max(1, min(int(setting), repeats))
    return max(1, min(repeats, usable_cores())) if n_values >= 1_000_000 else 1


def _init_worker(threads: int) -> None:
    import signal
    torch.set_num_threads(threads)
    # the parent decides when to stop (SIGTERM from SLURM, Ctrl-C reach the whole group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def process_map(workers: int, label: str = "bootstrap"):
    """A ``map`` over ``workers`` fresh processes (spawned: no forked torch thread pools),
    each with its share of the cores as torch threads. On SIGTERM or Ctrl-C the parent
    kills the workers and raises :class:`~cvflow.stop.StopRequested` within a fraction of
    a second."""
    import concurrent.futures as cf
    import multiprocessing as mp
    threads = max(1, usable_cores() // workers)
    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(threads,))

    def pmap(fn, *iterables):
        futures = [pool.submit(fn, *args) for args in zip(*iterables)]
        for i, f in enumerate(futures):
            while True:
                check_stop(f"{label}, network {i + 1} of {len(futures)}")
                try:
                    yield f.result(timeout=0.25)
                    break
                except cf.TimeoutError:
                    continue
    ok = False
    try:
        yield pmap
        ok = True
    finally:
        if ok:
            pool.shutdown(wait=True)
        else:
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.kill()
