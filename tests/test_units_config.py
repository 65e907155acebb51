"""Quantities with units, config validation and its messages."""
import pytest
from hypothesis import given, settings, strategies as st

from cvflow.config import Config, ConfigError, config_from_dict, dump_config
from cvflow.units import UnitError, parse_quantity

TOY = {"potential": "x^2+y^2", "mass": "1 amu"}


@pytest.mark.parametrize("text,dim,value", [
    ("300 K", "temperature", 300.0), ("2 fs", "time", 0.002), ("1 /ps", "rate", 1.0),
    ("1/ps", "rate", 1.0), ("1.2 A", "length", 0.12), ("500 kJ/mol/nm^2", "force_constant", 500.0),
    ("10 kcal/mol/rad^2", "force_constant", 41.84), ("5 kJ/mol*ps^2", "ext_mass", 5.0), ("1e-3 ns", "time", 1.0),
])
def test_parse_quantity(text, dim, value):
    assert parse_quantity(text, dim) == pytest.approx(value)


@pytest.mark.parametrize("value,dim", [(300, "temperature"), ("300", "temperature"), ("2 nm", "time"),
                                       ("2 parsec", "length"), ("fast", "rate")])
def test_bad_quantities(value, dim):
    with pytest.raises(UnitError):
        parse_quantity(value, dim)


def test_round_trip_of_resolved_config():
    cfg = config_from_dict({"system": TOY, "md": {"timestep": "20 fs", "temperature": "30 K"}})
    again = config_from_dict(dump_config(cfg))
    assert again == cfg
    assert again.md.timestep == pytest.approx(0.02)


@pytest.mark.parametrize("data,needle", [
    ({"system": TOY, "md": {"timestpe": "2 fs"}}, "did you mean 'timestep'"),
    ({"system": TOY, "md": {"temperature": 300}}, "md.temperature"),
    ({"system": TOY, "md": {"steps": 0}}, "md.steps"),
    ({"system": TOY, "bias": {"grid": [{"min": 1, "max": -1, "bins": 10}]}}, "grid min"),
    ({"system": {"potential": "x", "mass": 1}}, "system.mass"),
    ({"sytem": TOY}, "did you mean 'system'"),
])
def test_config_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)


_values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["2 fs", "300 K", "1 /ps", "5 nm", "auto", "-1 K"]))
_md = st.dictionaries(st.sampled_from(["temperature", "timestep", "friction", "steps", "report_interval",
                                       "platform", "bogus"]), _values, max_size=4)
_bias = st.dictionaries(st.sampled_from(["kappa", "tau", "grid", "fullsamples", "engine", "friction"]),
                        st.one_of(_values, st.lists(st.fixed_dictionaries(
                            {"min": st.floats(-5, 5), "max": st.floats(-5, 5), "bins": st.integers(-2, 100)}),
                            max_size=3)), max_size=3)


@settings(max_examples=200, deadline=None)
@given(md=_md, bias=_bias, seed=_values)
def test_validator_only_raises_config_error(md, bias, seed):
    data = {"system": TOY, "md": md, "bias": bias}
    if seed is not None:
        data["seed"] = seed
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        assert str(e).startswith("config:")
    else:
        assert isinstance(cfg, Config)


def test_written_files_are_readable_by_the_group(tmp_path):
    """Atomic writes must not leave mkstemp's 0600 on results (shared project directories)."""
    import os
    from cvflow import artifacts as art
    old = os.umask(0o022)
    try:
        art.write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~art._UMASK
    assert (tmp_path / "a.txt").stat().st_mode & 0o044 == 0o044
