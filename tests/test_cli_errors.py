"""Every bad input gets exit status 2, one or two lines that name the problem, no traceback."""
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from cvflow.cli import main
from conftest import ALA2_PDB, ES_CONFIG, random_neural_cv

ES = yaml.safe_load(ES_CONFIG.read_text())


def _write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _es(**changes):
    import copy
    d = copy.deepcopy(ES)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            d.setdefault(section, {})[leaf] = value
        else:
            d[section] = value
    return d


def _ala2(**system):
    return {"system": {"pdb": str(ALA2_PDB), **system}, "md": {"steps": 100, "report_interval": 10},
            "output": "out"}


class _Three(torch.nn.Module):
    def forward(self, pos):
        return pos[0]


def _cases(tmp_path):
    bad_pdb = tmp_path / "bad.pdb"
    bad_pdb.write_text(ALA2_PDB.read_text().replace(" CB  ALA", " CX  ALA"))
    wrong_atoms = random_neural_cv(tmp_path / "ala2cv.pt", __import__("conftest").build_ala2())
    three = tmp_path / "three.pt"
    torch.jit.script(_Three()).save(str(three))
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    return [
        ("unknown key", ["validate"], _es(md__timestpe="2 fs"), "did you mean 'timestep'"),
        ("bare number", ["validate"], _es(md__temperature=300), "md.temperature"),
        ("wrong unit", ["validate"], _es(md__timestep="2 nm"), "md.timestep"),
        ("zero steps", ["validate"], _es(md__steps=0), "md.steps"),
        ("negative steps", ["validate"], _es(md__steps=-5), "md.steps"),
        ("grid min>=max", ["validate"], _es(bias__grid=[{"min": 1.0, "max": 1.0, "bins": 10}]), "grid min"),
        ("missing pdb", ["validate"], _ala2() | {"system": {"pdb": "nope.pdb"}}, "nope.pdb"),
        ("missing forcefield", ["validate"], _ala2(forcefield=["nonexistent-ff.xml"]), "nonexistent-ff.xml"),
        ("unmatched residue", ["validate"], _ala2() | {"system": {"pdb": str(bad_pdb)}}, "residue 1 (ALA)"),
        ("cv atom count", ["validate"], _es(bias__cv=str(wrong_atoms)), "22 atoms"),
        ("cv shape", ["validate"], _es(bias__cv=str(three)), "returns shape"),
        ("yaml syntax", ["validate"], "system:\n  potential: [x\nmd: {", "line"),
        ("unwritable output", ["run"], _es(output=str(blocker / "run")), "cannot write"),
        ("non-empty output", ["run"], _es(output=str(full)), "not empty"),
        ("engine unavailable", ["validate"], _es(bias__engine="plumed"), "plumed"),
    ]


def test_bad_inputs(tmp_path, monkeypatch):
    monkeypatch.delenv("PLUMED_KERNEL", raising=False)
    runner = CliRunner()
    failures = []
    for name, cmd, data, needle in _cases(tmp_path):
        cfg = _write(tmp_path, data, f"{name.replace(' ', '_')}.yaml")
        result = runner.invoke(main, cmd + [str(cfg)])
        out = result.output
        ok = (result.exit_code == 2 and needle in out and "Traceback" not in out
              and len(out.strip().splitlines()) <= 2 and not isinstance(result.exception, Exception)
              or (isinstance(result.exception, SystemExit) and result.exit_code == 2 and needle in out
                  and "Traceback" not in out and len(out.strip().splitlines()) <= 2))
        if not ok:
            failures.append(f"{name}: exit {result.exit_code}, output {out!r}, exception {result.exception!r}")
    assert not failures, "\n".join(failures)


def test_sample_refuses_non_empty_out(tmp_path, x_cv):
    out = tmp_path / "o"
    out.mkdir()
    (out / "f").write_text("")
    result = CliRunner().invoke(main, ["sample", str(ES_CONFIG), "--cv", str(x_cv), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output
