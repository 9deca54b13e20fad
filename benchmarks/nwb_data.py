"""NWB inputs for the ``isi_violations`` jobs, written once by the shipped example generator
(``examples/make_examples.py``: ``write_nwb``, Poisson trains with a dead time, injected violations)
and cached under ``benchmarks/.cache/nwb/`` (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CACHE_DIR


def _examples() -> Any:
    from examples import make_examples

    return make_examples


def nwb_files(count: int, units: int, spikes_per_unit: int, log: Any = print) -> list[Path]:
    """``count`` NWB files with ``units`` units of about ``spikes_per_unit`` spikes each (cached)."""
    folder = CACHE_DIR / "nwb" / f"u{units}_s{spikes_per_unit}"
    folder.mkdir(parents=True, exist_ok=True)
    examples = None
    paths = []
    for i in range(count):
        asset = f"ecephys_{800000 + i}_bench"
        path = folder / asset / f"{asset}.nwb"
        if not path.is_file():
            if examples is None:
                examples = _examples()
                log(f"  writing {count} NWB files of {units} units x ~{spikes_per_unit} spikes to {folder}")
            _write(examples, path, units, spikes_per_unit, seed=i)
        paths.append(path)
    return paths


def _write(examples: Any, path: Path, units: int, spikes_per_unit: int, seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    rate_hz = 20.0
    duration = spikes_per_unit / rate_hz
    with_obs = seed % 2 == 0
    gap = (0.4 * duration, 0.5 * duration)
    trains, intervals = [], []
    for _ in range(units):
        train = examples.poisson_train(rng, float(rng.uniform(0.8, 1.2)) * rate_hz, duration)
        if rng.random() < 0.4:
            train = examples.inject_violations(rng, train, float(rng.uniform(0.005, 0.03)))
        train = train[train < duration]
        if with_obs:
            train = train[(train < gap[0]) | (train >= gap[1])]
            intervals.append([(0.0, gap[0]), (gap[1], duration)])
        trains.append(train)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
    examples.write_nwb(partial, trains, intervals if with_obs else None, list(range(units)))
    os.replace(partial, path)


def warm(paths: list[Path]) -> None:
    """Read every file once, so neither side of a comparison pays for a cold page cache."""
    for path in paths:
        with path.open("rb") as handle:
            while handle.read(16 * 1024 * 1024):
                pass
