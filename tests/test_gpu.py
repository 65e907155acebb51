"""The CUDA platform (marked gpu; run by .ci/run only where CUDA works)."""
import numpy as np
import openmm as mm
import pytest
from openmm import unit as u

from cvflow.fes import Grid
from cvflow.sampler import make_bias
from conftest import build_ala2, random_neural_cv

pytestmark = pytest.mark.gpu


def _cuda():
    names = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if "CUDA" not in names:
        pytest.skip("OpenMM has no CUDA platform here")
    return mm.Platform.getPlatformByName("CUDA")


def _forces(system, positions, platform, props=None):
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), platform, props or {})
    ctx.setPositions(positions * u.nanometer)
    st = ctx.getState(getForces=True, getEnergy=True)
    return (st.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer),
            st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))


def test_biased_forces_on_cuda_match_reference(tmp_path):
    """Force field + native eABF bias (random 2-D neural CV, λ displaced from ξ so that the
    coupling force is large): CUDA (mixed precision) against Reference (double). Tolerance:
    mixed precision accumulates forces in single precision, ~1e-5 relative; 1e-3 of the
    largest force component, and 1e-4 relative in energy."""
    cuda = _cuda()
    bundle = build_ala2()
    cv = random_neural_cv(tmp_path / "cv.pt", bundle)
    grid = Grid([-1.0, -1.0], [1.0, 1.0], [40, 40])
    from cvflow.config import Config
    from conftest import ALA2_PDB
    cfg = Config.model_validate({"system": {"pdb": str(ALA2_PDB)}, "bias": {"kappa": "1000 kJ/mol/cv^2"}})
    out = []
    for plat, props in ((mm.Platform.getPlatformByName("Reference"), {}), (cuda, {"Precision": "mixed"})):
        bias = make_bias(cfg, bundle, cv, grid, seed=3)
        system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
        system.addForce(bias.make_force())
        bias.initialised = True
        bias.lam[:] = bias.cv(bundle.positions[bias.cv.particles])[0] + 0.05
        out.append(_forces(system, bundle.positions, plat, props))
    (f_ref, e_ref), (f_gpu, e_gpu) = out
    scale = np.abs(f_ref).max()
    assert np.abs(f_gpu - f_ref).max() < 1e-3 * scale
    assert abs(e_gpu - e_ref) < 1e-4 * max(1.0, abs(e_ref))


def test_sample_runs_on_cuda(tmp_path):
    _cuda()
    import yaml
    from click.testing import CliRunner
    from cvflow.cli import main
    from conftest import ALA2_PDB, ROOT
    bundle = build_ala2()
    cv = random_neural_cv(tmp_path / "cv.pt", bundle)
    d = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    d["system"]["pdb"] = str(ALA2_PDB)
    d["md"].update(steps=5000, platform="CUDA")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["sample", str(cfg), "--cv", str(cv), "--out", str(tmp_path / "run"),
                                    "--grid=-1,1,40", "--grid=-1,1,40", "-q"])
    assert res.exit_code == 0, res.output
    assert "on CUDA" in res.output
    assert (tmp_path / "run" / "fes.csv").exists()


def test_training_on_cuda_exports_a_cpu_cv(tmp_path):
    """model.device: cuda trains on the GPU; the exported CV is CPU TorchScript that equals
    the in-memory model, and a second training on the same device gives the same numbers."""
    import torch
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from cvflow.config import ModelConfig
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures, featurize
    from cvflow.train import encode, train_model
    bundle = build_ala2()
    rng = np.random.default_rng(0)
    idx = bundle.feature_atoms
    frames = bundle.positions[None] + 0.02 * rng.normal(size=(3000,) + bundle.positions.shape)
    feats = AlignedFeatures(idx, bundle.positions[idx], align=True)
    x = featurize(frames, feats)
    cfg = ModelConfig(hidden=[16], bottleneck=2, epochs=5, patience=5, device="cuda")
    a, b = (train_model(x, None, cfg, 7) for _ in range(2))
    assert next(a.model.parameters()).device.type == "cpu"
    assert np.array_equal(encode(a, x), encode(b, x))
    export_cv(feats, a.mean, a.std, a.model.encoder, bundle.n_atoms, tmp_path / "cv.pt",
              check_positions=frames[:20])
    m = torch.jit.load(str(tmp_path / "cv.pt"), map_location="cpu")
    got = m(torch.as_tensor(frames[:50])).double().numpy()
    assert np.allclose(got, encode(a, x[:50]), atol=1e-5)
