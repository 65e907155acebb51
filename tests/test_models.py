"""The model registry: the contract every kind keeps, the multi-decoder loss, the decoder
export, transition-state frames in the loss, and the run-level wiring (issue 19)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cvflow.cli import main
from cvflow.config import ModelConfig
from cvflow.models import MODELS, CVModel, MLPBank, MultiDecoderAutoencoder, build_model
from conftest import quick_es


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_kind_keeps_the_contract(kind):
    cfg = ModelConfig(kind=kind, hidden=[8], bottleneck=1)
    m = build_model(cfg, 5)
    assert isinstance(m, CVModel)
    x, w = torch.randn(7, 5), torch.ones(7)
    assert m.encoder(x).shape == (7, 1)
    loss = m.loss(x, w)
    assert loss.ndim == 0 and torch.isfinite(loss)
    m.start_epoch(1, 10)
    dec = m.decoder_module()
    assert dec(m.encoder(x)).shape == (7, m.n_decoders, 5)
    # a tanh CV layer by default, an unbounded one (identity) for the VAE's Gaussian mean
    expected = (-np.inf, np.inf) if kind == "vae" else (-1.0, 1.0)
    assert MODELS[kind].cv_range_for(cfg) == expected
    assert MODELS[kind].cv_range_for(ModelConfig(kind=kind, bottleneck_activation="tanh")) == (-1.0, 1.0)


def _adam_steps(pairs, steps, gen):
    """Steps ``steps`` (a range) of each (model, optimizer) pair on the same random batches."""
    for step in steps:
        x, w = torch.randn(32, 12, generator=gen), torch.rand(32, generator=gen)
        for model, o in pairs:
            torch.manual_seed(step)  # the VAE draws in its loss
            loss = model.loss(x, w)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
    return x, w


def _same_parameters(m, ref):
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("kind,weight_decay", [("autoencoder", 0.0), ("autoencoder", 1e-3),
                                               ("multidecoder", 0.0), ("vae", 1e-4)])
def test_the_trainers_adam_is_torch_fused_adam_to_the_bit(kind, weight_decay):
    """The trainer's optimizer (:class:`cvflow.train.FusedAdam`, torch's fused kernel without
    its Python wrapper, one step count shared while the counts are equal) leaves every
    parameter bit-identical to ``torch.optim.Adam(fused=True)`` over 60 steps, then through
    a step that skips a parameter and 9 more with unequal counts, so the loop's numbers do
    not depend on which of the two ran."""
    import copy
    from cvflow.train import FusedAdam, _adam
    cfg = ModelConfig(kind=kind, hidden=[9], bottleneck=2, weight_decay=weight_decay, learning_rate=1e-2)
    torch.manual_seed(0)
    m = build_model(cfg, 12)
    ref, start = copy.deepcopy(m), copy.deepcopy(m)
    opt = _adam(m, cfg)
    assert isinstance(opt, FusedAdam)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=weight_decay, fused=True)
    pairs = ((m, opt), (ref, opt_ref))
    gen = torch.Generator().manual_seed(1)
    x, w = _adam_steps(pairs, range(60), gen)
    _same_parameters(m, ref)
    assert all(not torch.equal(p, q) for p, q in zip(m.parameters(), start.parameters()))  # every one moved
    # a parameter without a gradient in a step is skipped, its step count too, as torch does
    first = next(m.parameters())
    before = first.detach().clone()
    for model, o in pairs:
        o.zero_grad(set_to_none=True)
        torch.manual_seed(60)
        model.loss(x, w).backward()
        next(model.parameters()).grad = None
        o.step()
    assert torch.equal(first, before) and torch.equal(first, next(ref.parameters()))
    _same_parameters(m, ref)
    assert float(opt.steps[0]) == 60 and float(opt.steps[1]) == 61
    # and after it, with counts that differ from parameter to parameter
    _adam_steps(pairs, range(61, 70), gen)
    _same_parameters(m, ref)
    assert float(opt.steps[0]) == 69 and float(opt.steps[1]) == 70


def test_decoder_bank_is_k_independent_networks():
    """Each member of an MLPBank equals an ordinary MLP with its weights."""
    bank = MLPBank([2, 6, 3], ["tanh", "identity"], 3)
    z = torch.randn(11, 2)
    out = bank(z)
    assert out.shape == (11, 3, 3)
    for k in range(3):
        h = torch.tanh(z @ bank.weights[0][k] + bank.biases[0][k])
        ref = h @ bank.weights[1][k] + bank.biases[1][k]
        assert torch.allclose(out[:, k], ref, atol=1e-6)


def test_multidecoder_loss_is_the_weighted_best_decoder_error():
    torch.manual_seed(0)
    m = MultiDecoderAutoencoder(4, [6], 1, decoders=3, tau_start=10.0, tau_end=1e-4, anneal_epochs=5)
    x, w = torch.randn(20, 4), torch.rand(20) * 2
    e = m.errors(x)
    hard = (w * e.min(1).values).sum() / 20
    m.eval()
    assert torch.allclose(m.loss(x, w), hard)              # validation: the objective itself
    m.train()
    m.start_epoch(1, 10)                                    # τ = 10: close to the mean over decoders
    assert m.tau == pytest.approx(10.0)
    mean = ((w * e.mean(1)).sum() / 20).detach()
    assert abs(float(m.loss(x, w).detach() - mean)) < 0.05 * float(mean)
    m.start_epoch(5, 10)                                    # end of annealing: τ = 1e-4, the minimum
    assert m.tau == pytest.approx(1e-4)
    assert torch.allclose(m.loss(x, w), hard, atol=1e-3)
    m.start_epoch(3, 10)                                    # geometric in between
    assert m.tau == pytest.approx(10.0 * (1e-5) ** 0.5)


def test_training_with_transition_states_adds_their_weighted_error():
    """The extra frames enter the loss as L(data) + weight · mean ℓ(extra): a decoder is
    pulled towards frames that the data alone never show."""
    from cvflow.train import train_model
    rng = np.random.default_rng(0)
    t = rng.uniform(-1, 1, 3000)
    x = np.column_stack([t, 0.02 * rng.standard_normal(3000)])     # a segment on y = 0
    ts = np.column_stack([np.zeros(50), 0.4 + 0.01 * rng.standard_normal(50)])  # off it, at x = 0
    cfg = ModelConfig(hidden=[16], bottleneck=1, epochs=150, patience=150, threads=1, scaling="global")
    near = []
    for weight in (0.0, 1.0):
        r = train_model(x, None, cfg, seed=1, extra=ts, extra_weight=weight)
        dec = r.model.decoder_module()
        z = torch.linspace(-1, 1, 401)[:, None]
        with torch.no_grad():
            curve = dec(z)[:, 0].numpy() * r.std + r.mean
        near.append(float(np.min(np.linalg.norm(curve - [0.0, 0.4], axis=1))))
    assert near[1] < 0.1 < near[0], near


def test_barrier_regions_find_the_top_of_a_double_well():
    from cvflow.transition_states import barrier_regions
    c = np.linspace(-1.5, 1.5, 61)
    beta = 2.0
    f = (c**2 - 1) ** 2 * 5.0 / beta                      # 5 kT barrier at 0
    regions = barrier_regions(c[:, None], f, beta, window_kT=1.0, prominence_kT=1.0)
    assert len(regions) == 1
    r = regions[0]
    assert r["top"] == pytest.approx(0.0, abs=1e-9) and r["prominence_kT"] == pytest.approx(5.0)
    # F within 1 kT of the top: 5(c² − 1)² ≥ 4  ⇔  |c| ≤ 0.3249
    assert r["low"] == pytest.approx(-0.3249, abs=0.05) and r["high"] == pytest.approx(0.3249, abs=0.05)
    flat = barrier_regions(c[:, None], 0.1 * c**2, beta, 1.0, 1.0)
    assert flat == []


def test_a_run_keeps_decoders_and_transition_state_frames(tmp_path):
    """A short multidecoder run with barrier frames: every iteration has decoder.pt of shape
    (n, K, 2) in nm, the frames used are recorded, and --resume after the run finished
    changes nothing."""
    out = tmp_path / "md2"
    cfg = quick_es(tmp_path, out, model={"kind": "multidecoder", "decoders": 2, "epochs": 40, "patience": 10,
                                         "threads": 1, "softmin": {"anneal_epochs": 20},
                                         "transition_states": {"source": "barrier", "weight": 0.5,
                                                               "prominence_kT": 0.3}})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    for it in s["iterations"]:
        d = out / f"iter_{it['index']:03d}"
        dec = torch.jit.load(str(d / "decoder.pt"))
        z = torch.linspace(-0.9, 0.9, 5, dtype=torch.float64)[:, None]
        rec = dec(z)
        assert rec.shape == (5, 2, 2) and dec.n_decoders == 2
        assert float(rec.abs().max()) < 3.0                    # x, y in nm, inside the toy's range
        info = stages[f"iter_{it['index']:03d}/train"]
        assert info["decoder"]["decoders"] == 2 and sum(info["decoder"]["weight_share"]) == pytest.approx(1.0)
        ts = json.loads((d / "transition_states.json").read_text())
        assert ts["source"] == "barrier" and ts["frames"] == len(np.load(d / "transition_states.npy"))
        if it["index"] == 0:  # unbiased: no free energy along a CV yet
            assert ts["frames"] == 0
        if it["index"] == 1:  # biased on CV 0, whose free energy has a 0.56-kT bump here
            assert ts["frames"] > 0 and len(ts["frame_indices"]) == ts["frames"]
            assert all(b["low"] <= b["top"] <= b["high"] for b in ts["barriers"])
    before = (out / "summary.json").read_text()
    res = CliRunner().invoke(main, ["run", str(cfg), "-q", "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["iterations"] == json.loads(before)["iterations"]


@pytest.mark.parametrize("model, needle", [
    ({"kind": "multidecoder", "decoders": 0}, "model.decoders"),
    ({"softmin": {"start": 0.1, "end": 1.0}}, "softmin.end"),
    ({"transition_states": {"source": "file"}}, "needs transition_states.file"),
    ({"bottleneck": 2, "transition_states": {"source": "barrier"}}, "finds barriers of a 1-D free energy"),
    ({"kind": "transformer"}, "model.kind"),  # not a registered kind
])
def test_bad_model_values_get_one_line(tmp_path, model, needle):
    cfg = quick_es(tmp_path, tmp_path / "bad", model=model)
    res = CliRunner().invoke(main, ["validate", str(cfg)])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.strip().splitlines() if ln.strip()]) <= 2, res.output


def test_transition_state_file_with_the_wrong_atom_count(tmp_path, ala2_bundle):
    """A molecule's TS file must have the system's atoms: a one-line error, exit 2."""
    import mdtraj as md
    import yaml
    from conftest import ROOT
    top = md.Topology.from_openmm(ala2_bundle.topology)
    t = md.Trajectory(ala2_bundle.positions[None, :10].astype(np.float32), top.subset(range(10)))
    bad = tmp_path / "ts.pdb"
    t.save_pdb(str(bad))
    d = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    d["model"]["transition_states"] = {"source": "file", "file": str(bad)}
    d["system"]["pdb"] = str(ROOT / "configs" / d["system"]["pdb"])
    d["md"]["steps"] = 2000
    d["output"] = str(tmp_path / "run")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 2, res.output
    assert "model.transition_states.file" in res.output and "has 10 atoms, the system has 22" in res.output
    assert "Traceback" not in res.output


def test_exported_decoder_reconstructs_in_feature_units(tmp_path):
    """decoder.pt(ξ(x)) equals the in-memory reconstruction, un-normalised (nm)."""
    from cvflow.export import export_decoder
    from cvflow.train import encode, train_model
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, 2000)
    x = np.column_stack([5.0 + t, 2.0 + 0.3 * t**2])          # a parabola away from the origin
    cfg = ModelConfig(kind="multidecoder", decoders=2, hidden=[12], bottleneck=1, epochs=30, patience=30,
                      threads=1, softmin={"anneal_epochs": 10})
    r = train_model(x, None, cfg, seed=0)
    z = encode(r, x[:100])
    dec = export_decoder(r.model.decoder_module(), r.mean, r.std, 2, tmp_path / "decoder.pt", check_z=z)
    with torch.no_grad():
        rec = dec(torch.as_tensor(z)).numpy()
        ref = r.model.double()(torch.as_tensor((x[:100] - r.mean) / r.std)).numpy() * r.std + r.mean
    assert rec.shape == (100, 2, 2)
    assert np.allclose(rec, ref, atol=1e-8)
    best = np.linalg.norm(rec - x[:100, None], axis=-1).min(1)
    assert np.median(best) < 0.1                               # it reconstructs, in nm


def test_multidecoder_with_walkers(tmp_path):
    """Two eABF walkers per stage feed the multi-decoder training as they feed the autoencoder."""
    out = tmp_path / "walk"
    cfg = quick_es(tmp_path, out, model={"kind": "multidecoder", "epochs": 20, "patience": 5, "threads": 1,
                                         "softmin": {"anneal_epochs": 10}},
                   md={"steps": 10_000}, execution={"walkers": 2, "workers": 2},
                   convergence={"max_iterations": 2, "production_steps": 10_000, "bootstrap": {"repeats": 2}})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert len(s["iterations"]) == 2 and s["iterations"][1]["walkers_failed"] == []
    assert torch.jit.load(str(out / "iter_001" / "decoder.pt")).n_decoders == 2


def test_report_writes_decoded_structures_of_a_molecule(ala2_run, tmp_path):
    """The report of a molecular run has the decoded structures along ξ as a multi-model PDB
    of the feature atoms that MDTraj reads: 41 models per CV component and decoder, which
    look like the backbone (bond N–CA near 0.146 nm)."""
    import mdtraj as md
    from cvflow.report import write_report
    run, summary = ala2_run
    write_report(run, tmp_path / "report")
    grid = json.loads((run / "manifest.json").read_text())["stages"][summary["final_cv"].replace("/cv.pt", "/train")]["grid"]
    t = md.load(str(tmp_path / "report" / "decoded.pdb"))
    n_feature_atoms = torch.jit.load(str(run / summary["final_cv"].replace("cv.pt", "decoder.pt"))).mean.shape[0] // 3
    assert t.n_frames == 41 * len(grid) and t.n_atoms == n_feature_atoms
    n, ca = t.topology.select("resname ALA and name N")[0], t.topology.select("resname ALA and name CA")[0]
    bond = md.compute_distances(t, [[n, ca]])[:, 0]
    # a decoded structure is a conditional mean of aligned coordinates, so where ξ mixes
    # conformers its bonds shrink (0.113–0.144 nm measured here): a backbone, not a physical one
    assert np.all((bond > 0.09) & (bond < 0.17)), bond


def test_warm_start_begins_from_the_given_network_and_round_trips(tmp_path):
    """train_model(init=...) starts from init's parameters and keeps its normalisation: with
    a learning rate of 1e-12 and one epoch the CV is init's to 1e-6. save_result/load_result
    give the same CV; a network of another shape is refused naming the file."""
    from cvflow.train import TrainingError, encode, load_result, save_result, train_model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    cfg = ModelConfig(hidden=[8], bottleneck=1, epochs=5, batch_size=64, threads=1)
    first = train_model(x, None, cfg, seed=1)
    frozen = cfg.model_copy(update={"learning_rate": 1e-12, "epochs": 1})
    warm = train_model(x + 3.0, None, frozen, seed=2, init=first)
    assert np.array_equal(warm.mean, first.mean) and np.array_equal(warm.std, first.std)
    np.testing.assert_allclose(encode(warm, x), encode(first, x), atol=1e-6)
    cold = train_model(x, None, frozen, seed=2)
    assert np.abs(encode(cold, x) - encode(first, x)).max() > 1e-3  # a fresh start is elsewhere
    save_result(first, tmp_path / "model.pt")
    np.testing.assert_array_equal(encode(load_result(tmp_path / "model.pt", cfg), x), encode(first, x))
    with pytest.raises(TrainingError, match="model.pt"):
        load_result(tmp_path / "model.pt", cfg.model_copy(update={"hidden": [9]}))


def test_pooled_warm_started_loop_trains_as_documented(tmp_path):
    """model.training_data: pooled and warm_start: iteration 2's network is, to the bit, a
    network trained on the frames of the biased iterations 1 and 2 (weights scaled by each
    iteration's Kish ESS; the unbiased iteration 0 is left out) starting from iteration 1's
    model.pt, with the loop's seed."""
    from cvflow.config import load_config
    from cvflow.dataset import effective_sample_size, make_features
    from cvflow.features import featurize
    from cvflow.sampler import derive_seed, load_frames
    from cvflow.system import build_system
    from cvflow.train import load_result, train_model
    run = tmp_path / "run"
    cfg_path = quick_es(tmp_path, run, model={"training_data": "pooled", "warm_start": True},
                        convergence={"consecutive": 3})  # three iterations, whatever their scores
    res = CliRunner().invoke(main, ["run", str(cfg_path), "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(cfg_path)
    bundle = build_system(cfg.system, cfg.features.atoms)
    feats = make_features(bundle, cfg.features)
    xs, ws = [], []
    assert json.loads((run / "iter_000" / "md" / "segment.json").read_text())["engine"] == "none"
    for k in (1, 2):
        d = run / f"iter_{k:03d}"
        xs.append(featurize(load_frames(d / "md", bundle), feats))
        w = np.load(d / "weights.npy")
        ws.append(w / w.sum() * effective_sample_size(w))
    w = np.concatenate(ws)
    again = train_model(np.concatenate(xs), w / w.sum(), cfg.model, derive_seed(cfg.seed, 2, 1),
                        init=load_result(run / "iter_001" / "model.pt", cfg.model))
    saved = load_result(run / "iter_002" / "model.pt", cfg.model)
    for a, b in zip(again.model.state_dict().values(), saved.model.state_dict().values()):
        assert torch.equal(a, b)
    s = json.loads((run / "summary.json").read_text())
    assert all(0 <= it["threshold"] <= 1 for it in s["iterations"][1:])


def test_a_pass_right_after_a_warm_start_from_unbiased_frames_is_not_counted(tmp_path):
    """With model.warm_start, iteration 1's networks start from iteration 0's, which saw only
    unbiased frames, so its regscore reaching the threshold is not a pass (ala2 seeds 5 and 8
    stopped there, README "Early stops"); iteration 2's is. A fixed threshold of 1e-6 makes
    both reach it, whatever the scores; metrics.json, summary.json and `cvflow status` say
    why iteration 1 did not count. Without warm_start, iteration 1 passes."""
    from cvflow.report import load_run, status_table
    from rich.console import Console
    pooled = {"training_data": "pooled", "warm_start": True}
    for name, model, expect in (("warm", pooled, 3), ("cold", {}, 2)):
        cfg = quick_es(tmp_path, tmp_path / name, model=model, convergence={"threshold": 1e-6})
        res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
        assert res.exit_code == 0, res.output
        s = json.loads((tmp_path / name / "summary.json").read_text())
        assert s["converged"] and len(s["iterations"]) == expect
        one = json.loads((tmp_path / name / "iter_001" / "metrics.json").read_text())
        assert one["regscore"] >= one["threshold"] == 1e-6
        if name == "warm":
            assert not one["passed"] and one["passes_in_a_row"] == 0 and not one["converged"]
            assert one["not_counted"] == s["iterations"][1]["not_counted"] == "warm start from unbiased"
            assert s["iterations"][2]["not_counted"] is None and s["iterations"][2]["passed"]
            from cvflow.workflow import score_text
            assert score_text(s["iterations"][1]).endswith("not passed (not counted: warm start from unbiased)")
            con = Console(width=200, record=True)
            con.print(status_table(load_run(tmp_path / name)))
            assert "no (not counted: warm start from unbiased)" in con.export_text()
        else:
            assert one["passed"] and "not_counted" not in one and s["iterations"][1]["not_counted"] is None


def test_warm_started_run_killed_in_training_resumes_to_the_same_result(tmp_path):
    """SIGKILL during iteration 2's training of a pooled, warm-started run, then --resume:
    the regscores and thresholds equal an uninterrupted run's (the warm start is read back
    from iteration 1's model.pt)."""
    import signal
    import subprocess
    import sys
    import time
    over = dict(model={"training_data": "pooled", "warm_start": True}, convergence={"consecutive": 3})
    ref, killed = quick_es(tmp_path, tmp_path / "ref", **over), quick_es(tmp_path, tmp_path / "killed", **over)
    assert CliRunner().invoke(main, ["run", str(ref), "-q"]).exit_code == 0
    run = tmp_path / "killed"

    def current():
        try:
            return json.loads((run / "manifest.json").read_text()).get("current")
        except (OSError, ValueError):
            return None
    p = subprocess.Popen([sys.executable, "-m", "cvflow.cli", "run", str(killed), "-q"])
    t0 = time.time()
    while current() != "iter_002/train" and time.time() - t0 < 300:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert current() == "iter_002/train"
    assert CliRunner().invoke(main, ["run", str(killed), "-q", "--resume"]).exit_code == 0

    def core(path):
        s = json.loads((path / "summary.json").read_text())
        return [(it["index"], it["regscore"], it["threshold"]) for it in s["iterations"]]
    assert core(run) == core(tmp_path / "ref")
    assert len(core(run)) == 3


def test_knn_score_decides_the_loop_when_configured(tmp_path):
    """convergence.score: knn: each iteration's regscore is the k-NN score of its CV on the
    previous one over its frames, the bootstrap scores are k-NN too, and summary.json says so."""
    from cvflow.config import load_config
    from cvflow.convergence import knn_regscores
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.workflow import cv_values
    run = tmp_path / "run"
    cfg_path = quick_es(tmp_path, run, convergence={"score": "knn", "consecutive": 2})
    res = CliRunner().invoke(main, ["run", str(cfg_path), "-q"])
    assert res.exit_code == 0, res.output
    cfg = load_config(cfg_path)
    bundle = build_system(cfg.system, cfg.features.atoms)
    s = json.loads((run / "summary.json").read_text())
    assert "knn" in s["convergence"]["rule"]
    assert len(s["iterations"]) >= 2
    for it in s["iterations"][1:]:
        i = it["index"]
        frames = load_frames(run / f"iter_{i:03d}" / "md", bundle)
        per = knn_regscores(cv_values(run / f"iter_{i - 1:03d}" / "cv.pt", frames),
                            cv_values(run / f"iter_{i:03d}" / "cv.pt", frames))
        assert it["regscore_per_output"] == pytest.approx(per.tolist(), abs=1e-12)
        m = json.loads((run / f"iter_{i:03d}" / "metrics.json").read_text())
        assert len(m["bootstrap_scores"]) == cfg.convergence.bootstrap.repeats * (cfg.convergence.bootstrap.repeats - 1)
        assert all(-1 <= v <= 1 for v in m["bootstrap_scores"])


def test_restarts_keep_the_start_with_the_lowest_validation_loss():
    """model.restarts: every start trains on the same split, the lowest validation loss is
    kept (its network is the one returned), and start 1 is the single-start training."""
    from cvflow.train import encode, train_model
    rng = np.random.default_rng(5)
    t = rng.uniform(-1, 1, 1500)
    x = np.column_stack([np.cos(2 * t), np.sin(2 * t)]) + 0.02 * rng.standard_normal((1500, 2))  # an arc
    cfg = ModelConfig(hidden=[8], bottleneck=1, epochs=15, patience=15, threads=1)
    one = train_model(x, None, cfg, seed=3)
    many = train_model(x, None, cfg.model_copy(update={"restarts": 3}), seed=3)
    assert len(one.start_losses) == 1 and len(many.start_losses) == 3
    assert many.start_losses[0] == pytest.approx(one.best_val, rel=1e-6)
    assert len(set(round(v, 8) for v in many.start_losses)) == 3      # different starts
    assert many.best_val == min(many.start_losses)
    # the returned network is the kept start's: the single start's when that is the lowest
    same = np.allclose(encode(many, x[:50]), encode(one, x[:50]))
    assert same == (int(np.argmin(many.start_losses)) == 0), many.start_losses


def test_confirm_holds_a_stop_until_the_next_iteration_agrees(tmp_path):
    """convergence.confirm: a pass does not stop the loop; the next iteration confirms the
    stop when its bootstrap networks agree (threshold not floored) and its regscore reaches
    bootstrap.min_threshold, even below its own threshold; it refutes it when its networks
    disagree or its score is under the floor, and the loop goes on. The rule over a
    sequence of checks, each iteration's metrics.json read by the next as in a run."""
    from types import SimpleNamespace

    from cvflow import artifacts as art
    from cvflow.config import ConvergenceConfig
    from cvflow.workflow import Workflow

    conv = ConvergenceConfig(confirm=True, max_iterations=8, bootstrap={"min_threshold": 0.8})
    fake = SimpleNamespace(cfg=SimpleNamespace(convergence=conv), run_dir=tmp_path)
    fake._warm_start_unbiased = lambda prev: False
    fake._confirms = lambda i, score, floored: Workflow._confirms(fake, i, score, floored)

    def check(i, score, threshold, floored=False):
        out = Workflow._stop_rule(fake, i, score, {"threshold": threshold, "threshold_floored": floored}, None)
        art.write_json(tmp_path / f"iter_{i:03d}" / "metrics.json", out)
        return out

    one = check(1, 0.999, 0.98)
    assert one["passed"] and not one["converged"] and one["confirmation"] == "awaiting"
    two = check(2, 0.41, 0.8, floored=True)  # ala2 seed 9's next iteration: the networks disagree
    assert not two["converged"] and two["confirmation"] == "refuted" and two["passes_in_a_row"] == 0
    three = check(3, 0.99, 0.995)
    assert not three["passed"] and not three["converged"] and "confirmation" not in three
    assert check(4, 0.999, 0.995)["confirmation"] == "awaiting"
    five = check(5, 0.79, 0.9)  # agreeing networks, but a CV that moved past the floor
    assert five["confirmation"] == "refuted" and not five["converged"]
    assert check(6, 0.999, 0.995)["confirmation"] == "awaiting"
    seven = check(7, 0.985, 0.99)  # under its own threshold, over the floor: confirmed
    assert seven["converged"] and seven["confirmation"] == "confirmed" and not seven["passed"]
    # without confirm, the same pass stops the loop
    fake.cfg = SimpleNamespace(convergence=ConvergenceConfig(max_iterations=8))
    assert check(1, 0.999, 0.98)["converged"]


def test_confirmed_run_records_the_confirmation(tmp_path):
    """A run with convergence.confirm and a threshold every score reaches: iteration 1
    passes and waits, iteration 2 confirms, the loop stops there; summary.json, the log
    line and `cvflow status` say so, and the rule in summary.json names the confirmation."""
    from rich.console import Console

    from cvflow.report import load_run, status_table
    from cvflow.workflow import score_text
    run = tmp_path / "run"
    cfg = quick_es(tmp_path, run, convergence={"threshold": 1e-6, "confirm": True, "bootstrap": {"min_threshold": 0.0}})
    res = CliRunner().invoke(main, ["run", str(cfg), "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads((run / "summary.json").read_text())
    assert s["converged"] and len(s["iterations"]) == 3 and s["final_cv"] == "iter_002/cv.pt"
    assert [it["confirmation"] for it in s["iterations"]] == [None, "awaiting", "confirmed"]
    assert "confirmed by one more iteration" in s["convergence"]["rule"]
    assert score_text(s["iterations"][1]).endswith("passed; the stop waits for one more iteration to confirm it")
    con = Console(width=200, record=True)
    con.print(status_table(load_run(run)))
    text = con.export_text()
    assert "no (passed; one more iteration to confirm)" in text and "yes (confirmed)" in text
