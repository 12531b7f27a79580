"""Fine-tuning the published SO3LR weights with the trainer (``init_from``) on the project's GFN2-xTB data.

Converts ../shared/reference/so3lr/params.pkl (``so3krates.potential.convert``), trains a few steps
on four alanine-dipeptide frames of examples/data/so3krates_demo.extxyz and checks that the loss on
those frames falls, stays finite, and that the fine-tuned checkpoint loads and exports (float64
TorchScript) with the same energies and forces. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml

from helpers import ROOT, so3lr_dir

from so3krates.potential.checkpoint import load_checkpoint, model_from_checkpoint
from so3krates.potential.train.evaluate import predict_frames
from so3krates.potential.train.frames import read_frames
from so3krates.potential.train.trainer import train_main

DATA = ROOT / "examples" / "data" / "so3krates_demo.extxyz"
FRAMES = [0, 150, 300, 450]  # alanine dipeptide (22 atoms) from different trajectories/temperatures


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, so3lr_checkpoint):
    tmp = tmp_path_factory.mktemp("finetune")
    np.savetxt(tmp / "frames.txt", FRAMES, fmt="%d")
    cfg = {"run_dir": str(tmp / "run"), "seed": 0, "init_from": str(so3lr_checkpoint),
           "data": {"path": str(DATA), "index_files": {"train": str(tmp / "frames.txt"),
                                                        "valid": str(tmp / "frames.txt")}},
           "training": {"batch_size": 2, "valid_batch_size": 4, "max_steps": 8, "eval_every": 2, "lr": 2e-4,
                        "lr_decay": "none", "ema_decay": None, "loss_weights": {"energy": 1.0, "forces": 10.0},
                        "progress": False}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = train_main(str(path))
    return tmp, run, so3lr_checkpoint


def test_finetune_from_converted_so3lr_lowers_the_loss(finetuned):
    tmp, run, source = finetuned
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    losses = [float(r["valid_loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses), losses
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert losses[-1] < 0.9 * losses[0], losses  # on the frames it is trained on
    ck = load_checkpoint(run / "last.ckpt")
    src = load_checkpoint(source)
    assert ck["finished"] and ck["step"] == 8
    assert ck["config"] == src["config"]  # the architecture of the converted checkpoint (long-range terms on)
    assert ck["config"]["electrostatic_energy_bool"] and ck["config"]["dispersion_energy_bool"]
    # residual energy shifts re-fitted onto the GFN2-xTB reference level; the energy scale kept
    shifts = ck["normalization"]["energy_shifts"]
    assert set(shifts) == {1, 6, 7, 8}
    changed = [k for k in src["state_dict"] if src["state_dict"][k].is_floating_point()
               and not torch.allclose(src["state_dict"][k].float(), ck["state_dict"][k].float())]
    assert len(changed) > 10  # the network itself was trained, not only the offsets


def test_finetuned_checkpoint_loads_and_exports(finetuned, tmp_path):
    import so3krates.export.exporter as exporter

    _, run, _ = finetuned
    model = model_from_checkpoint(run / "best.ckpt", dtype=torch.float64)
    assert model.config.cutoff_lr == 12.0
    pt = tmp_path / "so3lr_finetuned.pt"
    exporter.export_checkpoint(str(run / "best.ckpt"), str(pt), dtype="float64")
    frames = [read_frames(DATA, index=f"{i}:{i + 1}")[0] for i in FRAMES[:2]]
    p_ck = predict_frames(str(run / "best.ckpt"), frames, progress=False)
    p_pt = predict_frames(str(pt), frames, progress=False)
    for a, b, f in zip(p_ck, p_pt, frames):
        assert math.isfinite(a["energy"])
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-6)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-6)
        # the fine-tuned model describes the GFN2-xTB frames it was fitted to (eV/Å)
        assert np.abs(a["forces"] - f.forces).mean() < 0.5
