"""Fixtures shared by the test modules: the published SO3LR weights, converted once per session.

The reference data come from ``../shared/reference/so3lr`` beside the repository (CI provides it);
a missing folder is a failure, never a skip (tests/helpers.so3lr_dir).
"""
from __future__ import annotations

import pytest
import torch

from helpers import so3lr_dir

#: SO3LR's calculator settings of the reference outputs: long-range cutoff and dispersion damping (Å)
SO3LR_LR_CUTOFF = 12.0
SO3LR_DAMPING = 2.0


@pytest.fixture(scope="session")
def so3lr_model():
    """The SO3LR network in float64, eval mode (do not modify: copy it first)."""
    from so3krates.potential.convert import load_so3lr
    return load_so3lr(so3lr_dir() / "params.pkl", lr_cutoff=SO3LR_LR_CUTOFF, dispersion_damping=SO3LR_DAMPING,
                      dtype=torch.float64).eval()


@pytest.fixture(scope="session")
def so3lr_checkpoint(tmp_path_factory):
    """``so3krates convert`` of the published weights: a .ckpt path."""
    from so3krates.potential.convert import convert_to_checkpoint
    path = tmp_path_factory.mktemp("so3lr") / "so3lr.ckpt"
    convert_to_checkpoint(so3lr_dir() / "params.pkl", path)
    return path


@pytest.fixture(scope="session")
def so3lr_file(so3lr_checkpoint):
    """The converted weights exported in float64 (TorchScript): a .pt path."""
    from so3krates.export.exporter import export_checkpoint
    path = so3lr_checkpoint.with_suffix(".pt")
    export_checkpoint(str(so3lr_checkpoint), str(path), dtype="float64")
    return path


def pytest_configure(config):
    # tests/test_current_env.py: runs inside .venv-current (scripts/run_tests.sh; docs/install.md)
    config.addinivalue_line("markers", "current_env: runs inside .venv-current (torch 2.13 CPU, PythonForce); "
                                       "bash scripts/run_tests.sh runs them there")


@pytest.fixture(scope="session")
def so3lr_pt2(so3lr_checkpoint):
    """The converted weights as a float64 ``.pt2`` package with engine stages (slow tests only: compiling SO3LR
    takes ~30-60 min here). ``SO3KRATES_TEST_SO3LR_PT2=<path>`` reuses a package made by ``so3krates export
    <so3lr.ckpt> --format pt2 --dtype float64`` of the same weights (checked through its metadata)."""
    import os
    from pathlib import Path
    from so3krates.export.exporter import export_checkpoint
    from so3krates.export.metadata import read_metadata
    given = os.environ.get("SO3KRATES_TEST_SO3LR_PT2")
    if given:
        meta = read_metadata(given)
        assert meta["format"] == "pt2" and meta["num_layers"] == 3 and meta["cutoff_lr"] == SO3LR_LR_CUTOFF, meta
        return Path(given)
    path = so3lr_checkpoint.with_suffix(".pt2")
    export_checkpoint(str(so3lr_checkpoint), str(path), dtype="float64", fmt="pt2")
    return path
