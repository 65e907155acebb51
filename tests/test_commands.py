"""The commands around a run: init, status, fes, report, export (on one finished quick run)."""
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cvflow.cli import EXAMPLES, main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("example", EXAMPLES)
def test_init_writes_a_config_that_validates(tmp_path, example):
    cfg = tmp_path / "config.yaml"
    res = invoke("init", "--example", example, "-o", cfg)
    assert res.exit_code == 0, res.output
    assert cfg.read_text().lstrip().startswith("#")  # commented for the user
    if example.startswith("ala2"):
        assert (tmp_path / "alanine-dipeptide.pdb").exists()
    val = invoke("validate", cfg)
    assert val.exit_code == 0, val.output


def test_init_never_overwrites(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("mine\n")
    res = invoke("init", "-o", cfg)
    assert res.exit_code == 2 and "exists" in res.output and "Traceback" not in res.output
    assert cfg.read_text() == "mine\n"


def test_status_is_plain_text_off_a_terminal(es_run):
    _, run = es_run
    res = invoke("status", run)
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output  # no colour codes in a log file
    assert "finished" in res.output and "production" in res.output
    # one row per iteration, with its regscore (iteration 0 has none)
    rows = [ln for ln in res.output.splitlines() if re.match(r"\|\s+\d+\s+\|", ln)]
    assert len(rows) == len(list(run.glob("iter_[0-9][0-9][0-9]")))
    assert re.search(r"\|\s+1\s+\|.*\|\s+0\.\d{4}\s+\|", res.output)


def test_status_of_a_directory_that_is_not_a_run(tmp_path):
    res = invoke("status", tmp_path)
    assert res.exit_code == 2 and "manifest.json" in res.output and "Traceback" not in res.output


def test_fes_plot_and_a_missing_iteration(es_run, tmp_path):
    _, run = es_run
    png = tmp_path / "fes.png"
    res = invoke("fes", run, "-o", png)
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "production" in res.output
    res = invoke("fes", run, "--iteration", 0, "-o", tmp_path / "f0.png")  # unbiased: no free energy
    assert res.exit_code == 2 and "iteration 0 has no free energy" in res.output
    res = invoke("fes", run, "--iteration", 99, "-o", tmp_path / "f99.png")
    assert res.exit_code == 2 and "no iteration 99" in res.output


def test_report_html_links_the_pictures_it_wrote(es_run):
    _, run = es_run
    res = invoke("report", run)
    assert res.exit_code == 0, res.output
    page = (run / "report" / "report.html").read_text()
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert {"fes_production.png", "cv_map.png", "convergence.png", "training.png", "weights.png"} <= set(imgs)
    for name in imgs:
        assert (run / "report" / name).read_bytes()[:4] == b"\x89PNG", name


def test_export_gives_the_final_cv(es_run, tmp_path):
    _, run = es_run
    import json
    s = json.loads((run / "summary.json").read_text())
    to = tmp_path / "exported"
    res = invoke("export", run, "--to", to)
    assert res.exit_code == 0, res.output
    names = {p.name for p in to.iterdir()}
    assert {"cv.pt", "plumed.dat", "cv_plumed.pt", "fes.csv"} <= names
    # the exported CV is the run's final CV: same values on random positions
    pos = torch.randn(1, 3, dtype=torch.float64)
    a = torch.jit.load(str(to / "cv.pt"))(pos)
    b = torch.jit.load(str(run / s["final_cv"]))(pos)
    assert torch.equal(a, b)
    assert (to / "fes.csv").read_bytes() == (run / s["final_fes"]).read_bytes()
    plumed = (to / "plumed.dat").read_text()
    assert "PYTORCH_MODEL" in plumed and "DRR" in plumed
    # a second export into the same, now non-empty directory is refused
    again = invoke("export", run, "--to", to)
    assert again.exit_code == 2 and "not empty" in again.output


def test_export_of_ala2_carries_the_reference_structure(ala2_run, tmp_path):
    out, s = ala2_run
    to = tmp_path / "exported"
    res = invoke("export", out, "--to", to)
    assert res.exit_code == 0, res.output
    import mdtraj as md
    ref = md.load(str(to / "reference.pdb"))
    assert ref.n_atoms == 22
    plumed = (to / "plumed.dat").read_text()
    assert "PYTORCH_MODEL" in plumed
    rep = invoke("report", out)
    assert rep.exit_code == 0, rep.output
    assert (Path(out) / "report" / "cv_map.png").exists()
