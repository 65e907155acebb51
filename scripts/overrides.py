"""``--set KEY=VALUE`` of the measurement scripts: a dotted key into a config dict (sections
are made as needed), the value read as YAML (``model.scaling=global``, ``bias.stride=2``,
``cg.tempering.kl_threshold=0.05``)."""
from __future__ import annotations

import yaml


def apply_overrides(cfg: dict, items) -> dict:
    """Apply ``KEY=VALUE`` items to ``cfg`` in order, in place; returns it."""
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. bias.stride=2")
        *path, leaf = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return cfg
