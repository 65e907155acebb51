"""A CV that turns NaN mid-run stops MD with an error naming the step; the last good state is kept."""
import torch
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ES_CONFIG


class NaNRight(torch.nn.Module):
    """ξ = x for x < −0.5, NaN beyond: the particle starts at x = −1 and soon crosses."""

    def forward(self, pos):
        x = pos[0, 0:1]
        return torch.where(x < -0.5, x, torch.full_like(x, float("nan")))


def test_nan_cv_stops_with_error_and_keeps_state(tmp_path):
    cv = tmp_path / "nan.pt"
    torch.jit.script(NaNRight()).save(str(cv))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sample", str(ES_CONFIG), "--cv", str(cv), "--out", str(out),
                                    "--steps", "200000", "--grid=-2,2,40", "-q"])
    assert res.exit_code == 1, res.output
    assert "non-finite CV value" in res.output and "at step" in res.output and "Traceback" not in res.output
    assert not (out / "segment.json").exists()
