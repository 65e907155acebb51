"""The one place where quantities are parsed and converted.

Config values that carry a dimension are strings such as ``"300 K"``, ``"2 fs"``,
``"1 /ps"`` or ``"500 kJ/mol/nm^2"``. They are parsed with :mod:`openmm.unit` and
converted to cvflow's internal units: nm, ps, K, amu, kJ/mol.

A bare number for a dimensional quantity is an error: a lone ``300`` might be
kelvin or anything else.
"""
from __future__ import annotations

import re

from openmm import unit as u

#: Unit symbols accepted in quantity strings.
UNITS: dict[str, u.Unit] = {
    "K": u.kelvin, "kelvin": u.kelvin,
    "fs": u.femtosecond, "ps": u.picosecond, "ns": u.nanosecond, "us": u.microsecond,
    "nm": u.nanometer, "A": u.angstrom, "angstrom": u.angstrom, "Å": u.angstrom,
    "amu": u.amu, "dalton": u.dalton, "Da": u.dalton,
    "kJ": u.kilojoule, "kcal": u.kilocalorie, "J": u.joule,
    "mol": u.mole, "rad": u.radian, "deg": u.degree, "cv": None,
}

#: Internal units by dimension name.
INTERNAL = {
    "temperature": u.kelvin,
    "time": u.picosecond,
    "rate": u.picosecond ** -1,
    "length": u.nanometer,
    "mass": u.amu,
    "energy": u.kilojoule_per_mole,
}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_QTY = re.compile(rf"^\s*({_NUMBER})\s*(.*?)\s*$")
_TOKEN = re.compile(r"([*/])?\s*([A-Za-zÅ]+)(?:\^([-+]?\d+))?\s*")


class UnitError(ValueError):
    """A quantity string that cannot be read, or has the wrong dimension."""


def _parse_unit(text: str) -> tuple[u.Unit | None, int]:
    """Parse ``kJ/mol/nm^2`` into an openmm unit; also count the ``cv`` power.

    ``cv`` stands for the (dimensionless or arbitrary) unit of a collective variable.
    """
    text = text.strip()
    if not text:
        return None, 0
    if text.startswith("/"):
        text = "1" + text
    if text.startswith("1"):
        text = text[1:].lstrip()
        first_sign = -1 if text.startswith("/") else 1
    else:
        first_sign = 1
        text = "*" + text
    result = None
    cv_power = 0
    pos = 0
    first = True
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UnitError(f"cannot read unit {text!r}")
        op, name, power = m.group(1), m.group(2), int(m.group(3) or 1)
        if name not in UNITS:
            raise UnitError(f"unknown unit {name!r} (known: {', '.join(k for k in UNITS if k != 'Å')})")
        sign = -1 if op == "/" else 1
        if first and op is None:
            sign = first_sign
        first = False
        if UNITS[name] is None:
            cv_power += sign * power
        else:
            factor = UNITS[name] ** (sign * power)
            result = factor if result is None else result * factor
        pos = m.end()
    return result, cv_power


def parse_quantity(value, dimension: str) -> float:
    """Parse a quantity string and return its value in cvflow's internal unit.

    Parameters
    ----------
    value : str
        Number and unit, e.g. ``"2 fs"``.
    dimension : str
        One of ``temperature``, ``time``, ``rate``, ``length``, ``mass``, ``energy``,
        ``force_constant`` (kJ/mol per CV unit squared) or ``ext_mass``
        (kJ/mol ps² per CV unit squared).

    Returns
    -------
    float
        The value in nm, ps, K, amu or kJ/mol.
    """
    if isinstance(value, bool) or not isinstance(value, str):
        raise UnitError(f"needs a unit, e.g. {_EXAMPLES[dimension]!r}; got bare {value!r}")
    m = _QTY.match(value)
    if not m:
        raise UnitError(f"cannot read {value!r} as a number with a unit, e.g. {_EXAMPLES[dimension]!r}")
    number = float(m.group(1))
    unit_text = m.group(2)
    if not unit_text:
        raise UnitError(f"needs a unit, e.g. {_EXAMPLES[dimension]!r}; got {value!r}")
    parsed, cv_power = _parse_unit(unit_text)
    q = number * parsed if parsed is not None else None
    try:
        if dimension in INTERNAL:
            if cv_power != 0 or q is None:
                raise TypeError
            return float(q.value_in_unit(INTERNAL[dimension]))
        if dimension == "force_constant":
            # kJ/mol per squared CV unit: the CV's own unit is written nm, rad or cv
            return _energy_per(q, cv_power, power=-2, extra=None)
        if dimension == "ext_mass":
            return _energy_per(q, cv_power, power=-2, extra=u.picosecond ** 2)
    except TypeError:
        pass
    raise UnitError(f"{value!r} is not a {dimension.replace('_', ' ')}, e.g. {_EXAMPLES[dimension]!r}")


def _energy_per(q, cv_power, power, extra):
    """Value of ``q`` in kJ/mol (times ``extra``) per CV unit to ``power``."""
    target = u.kilojoule_per_mole if extra is None else u.kilojoule_per_mole * extra
    if q is None:
        raise TypeError
    if cv_power == power:
        return float(q.value_in_unit(target))
    if cv_power != 0:
        raise TypeError
    for cvu in (u.nanometer, u.radian):
        try:
            return float(q.value_in_unit(target * cvu ** power))
        except TypeError:
            continue
    # plain kJ/mol: the CV is taken as dimensionless
    return float(q.value_in_unit(target))


_EXAMPLES = {
    "temperature": "300 K",
    "time": "2 fs",
    "rate": "1 /ps",
    "length": "1.2 nm",
    "mass": "1 amu",
    "energy": "5 kJ/mol",
    "force_constant": "500 kJ/mol/nm^2",
    "ext_mass": "5 kJ/mol*ps^2",
}

#: Boltzmann's constant in kJ/mol/K.
KB = float(u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin))


def kT(temperature_K: float) -> float:
    """Thermal energy in kJ/mol at ``temperature_K`` kelvin."""
    return KB * temperature_K
