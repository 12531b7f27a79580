"""Training, resuming, checkpoints, normalisation, batching and evaluation (fast: tiny model, tiny data).

Data: small random molecules (H, C, O) labelled in the test with an analytic Morse pair potential
plus per-element energy offsets, so energies and forces are exact and cheap.
"""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch

import ase  # noqa: E402  (pinned dependency: missing is a failure)
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from so3krates.potential.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from so3krates.potential.train.batch import collate  # noqa: E402
from so3krates.potential.train.config import load_config  # noqa: E402
from so3krates.potential.train.evaluate import evaluate_frames, evaluate_main, make_eval_model  # noqa: E402
from so3krates.potential.train.frames import Frame, frames_from_atoms, read_frames  # noqa: E402
from so3krates.potential.train.loss import loss_and_metrics, predict  # noqa: E402
from so3krates.potential.train.neighbor_lists import attach_neighbors, frame_neighbors  # noqa: E402
from so3krates.potential.train.normalization import apply_normalization, fit_energy_shifts  # noqa: E402
from so3krates.potential.train.optim import make_lr_lambda  # noqa: E402
from so3krates.potential.train.splits import load_splits, split_by_trajectory, split_indices  # noqa: E402
from so3krates.potential.train.trainer import train_main  # noqa: E402

OFFSETS = {1: -13.6, 6: -1030.0, 8: -2040.0}
TINY_MODEL = {"num_features": 16, "num_layers": 1, "degrees": [1, 2], "num_heads": 2,
              "cutoff": 4.0, "num_radial_basis_fn": 8, "energy_regression_dim": 16}


def morse(pos, z, D_e=0.5, a=1.5, r0=1.2):
    """Energy (eV) and forces (eV/Å) of a Morse pair potential + per-element offsets."""
    e = sum(OFFSETS[int(k)] for k in z)
    f = np.zeros_like(pos)
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            d = pos[j] - pos[i]
            r = np.linalg.norm(d)
            ex = np.exp(-a * (r - r0))
            e += D_e * ((1 - ex) ** 2 - 1)
            g = D_e * 2 * (1 - ex) * a * ex * d / r  # dE/dr * r_hat
            f[i] += g
            f[j] -= g
    return e, f


def make_molecules(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = int(rng.integers(3, 7))
        z = rng.choice([1, 6, 8], size=m)
        z[:3] = [1, 6, 8]  # every frame holds every element
        rng.shuffle(z)
        while True:
            pos = rng.uniform(0, 2.6, (m, 3))
            r = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(m)
            if r.min() > 0.9:
                break
        e, f = morse(pos, z)
        a = Atoms(numbers=z, positions=pos)
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "morse.extxyz"
    ase.io.write(path, make_molecules(24))
    return path


def _cfg(dataset, run_dir, **training):
    t = {"batch_size": 4, "lr": 3e-3, "progress": False, "epochs": 100, "eval_every": 3, "ema_decay": 0.9}
    t.update(training)
    return {"run_dir": str(run_dir), "seed": 3, "model": dict(TINY_MODEL),
            "data": {"path": str(dataset), "split": {"train": 16, "valid": 4, "test": 4, "seed": 1}},
            "training": t}


def _write_cfg(tmp_path, cfg):
    import yaml

    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run = train_main(_write_cfg(tmp, _cfg(dataset, tmp / "run", max_steps=36)))
    return run


# ---------------------------------------------------------------------------------------------
def test_training_reduces_loss_and_writes_outputs(trained_run):
    rows = _rows(trained_run)
    assert [int(r["step"]) for r in rows] == list(range(3, 37, 3))
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < 0.5 * first, (first, last)
    assert float(rows[-1]["valid_loss"]) < float(rows[0]["valid_loss"])
    for name in ("last.ckpt", "best.ckpt", "metrics.csv", "config.yaml", "learning_curve.png",
                 "parity_energy.png", "parity_forces.png", "test_metrics.json"):
        assert (trained_run / name).is_file(), name
    ck = load_checkpoint(trained_run / "last.ckpt")
    assert ck["step"] == 36 and ck["finished"]
    for key in ("config", "state_dict", "ema_state_dict", "species", "normalization", "optimizer", "scheduler",
                "ema", "rng", "train_config", "epoch"):
        assert key in ck, key
    assert ck["species"] == [1, 6, 8]


def test_resume_continues_the_same_run(dataset, tmp_path):
    n = 10  # not a multiple of the 4 batches per epoch: the split falls inside an epoch
    straight = train_main(_write_cfg(tmp_path, _cfg(dataset, tmp_path / "a", max_steps=n)))
    cfg_b = _write_cfg(tmp_path, _cfg(dataset, tmp_path / "b", max_steps=n))
    train_main(cfg_b, overrides={"training.stop_after_steps": n // 2})
    half = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert half["step"] == n // 2 and not half["finished"]
    assert [int(r["step"]) for r in _rows(tmp_path / "b")] == [3]
    resumed = train_main(cfg_b, resume=True)
    a, b = load_checkpoint(straight / "last.ckpt"), load_checkpoint(resumed / "last.ckpt")
    assert a["step"] == b["step"] == n
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a["ema_state_dict"][key], b["ema_state_dict"][key], rtol=1e-6, atol=1e-7)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert int(sa[k]["step"]) == int(sb[k]["step"]) == n
        torch.testing.assert_close(sa[k]["exp_avg"], sb[k]["exp_avg"], rtol=1e-6, atol=1e-9)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == n
    # metrics continue: same steps, same losses as the straight run
    ra, rb = _rows(straight), _rows(resumed)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == ["3", "6", "9", "10"]
    for x, y in zip(ra, rb):
        for key in ("train_loss", "valid_loss", "lr", "valid_forces_mae"):
            assert math.isclose(float(x[key]), float(y[key]), rel_tol=1e-6), (key, x[key], y[key])
    # resuming a finished run does nothing and keeps the step
    train_main(cfg_b, resume=True)
    assert load_checkpoint(resumed / "last.ckpt")["step"] == n
    # starting over an existing run without --resume is refused
    with pytest.raises(ValueError, match="resume"):
        train_main(cfg_b)


def test_checkpoint_round_trip(trained_run, dataset):
    ck = load_checkpoint(trained_run / "best.ckpt")
    model = model_from_checkpoint(trained_run / "best.ckpt", dtype=torch.float64)
    raw = model_from_checkpoint(trained_run / "best.ckpt", dtype=torch.float64, use_ema=False)
    for k, v in ck["ema_state_dict"].items():
        torch.testing.assert_close(model.state_dict()[k], v.double())
    frames = read_frames(dataset)[:5]
    attach_neighbors(frames, TINY_MODEL["cutoff"], progress=False)
    batch = collate(frames)
    e1 = predict(model, batch)["energy"]
    # save again with the checkpoint module and reload: identical predictions
    from so3krates.potential.checkpoint import save_checkpoint

    save_checkpoint(trained_run / "copy.ckpt", model, normalization=ck["normalization"])
    again = model_from_checkpoint(trained_run / "copy.ckpt").double()
    torch.testing.assert_close(predict(again, batch)["energy"], e1, rtol=0, atol=1e-10)
    assert not torch.allclose(predict(raw, batch)["energy"], e1)  # EMA differs from raw weights
    # the normalisation lives in the weights: offsets of the species equal the fitted shifts
    shifts = ck["normalization"]["energy_shifts"]
    off = model.energy_head.energy_offset.detach()
    for z, v in shifts.items():
        assert abs(float(off[int(z)]) - v) < 1e-3
    assert abs(float(model.energy_head.atomic_scales[1]) - ck["normalization"]["force_scale"]) < 1e-5


def test_energy_shift_fit_is_exact_for_linear_composition():
    rng = np.random.default_rng(0)
    true = {1: -13.6, 6: -1030.2, 8: -2041.7, 7: -1480.9}
    frames = []
    for _ in range(12):
        z = rng.choice(list(true), size=int(rng.integers(2, 9)))
        frames.append(Frame(positions=rng.normal(size=(len(z), 3)), atomic_numbers=z,
                              energy=float(sum(true[int(k)] for k in z))))
    species = sorted({int(k) for f in frames for k in f.atomic_numbers})
    fit = fit_energy_shifts(frames, species)
    for z in species:
        assert abs(fit[z] - true[z]) < 1e-8
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    model = So3krates(So3kratesConfig(**TINY_MODEL)).double()
    apply_normalization(model, fit, 2.5)
    for z in species:
        assert float(model.energy_head.energy_offset[z]) == pytest.approx(true[z], abs=1e-4)
        assert float(model.energy_head.atomic_scales[z]) == 2.5
    # a model whose network output is zero predicts the composition-linear energies exactly
    with torch.no_grad():
        for p in model.energy_head.mlp.dense_final.parameters():
            p.zero_()
    attach_neighbors(frames, 4.0, progress=False)
    pred = predict(model, collate(frames), compute_forces=False)["energy"]
    torch.testing.assert_close(pred, torch.tensor([f.energy for f in frames], dtype=torch.float64),
                               rtol=1e-12, atol=1e-9)


def test_collate_mixes_molecules_and_periodic_frames():
    from ase.build import bulk

    mols = frames_from_atoms(make_molecules(2, seed=5))
    cu = bulk("Cu", "fcc", a=3.6)  # primitive cell, smaller than the cutoff: many images
    cu.rattle(0.05, seed=1)
    per = frames_from_atoms([cu])
    frames = [mols[0], per[0], mols[1]]
    attach_neighbors(frames, 4.0, progress=False)
    batch = collate(frames)
    assert batch.num_graphs == 3
    assert batch.positions.shape[0] == sum(f.num_atoms for f in frames)
    assert batch.cell.shape == (3, 3, 3) and batch.pbc.tolist() == [[False] * 3, [True] * 3, [False] * 3]
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), batch.num_atoms))
    vec = batch.edge_vectors(batch.positions, batch.cell)
    assert torch.all(batch.batch[batch.idx_i] == batch.batch[batch.idx_j])
    assert (vec.norm(dim=-1) < 4.0).all() and (vec.norm(dim=-1) > 0).all()
    # periodic images: 12 + 6 neighbours of the fcc atom within 4 Å, each pair once
    assert int((batch.batch[batch.idx_i] == 1).sum()) == int(per[0].idx_i.shape[0]) == 9
    # batched energies equal single-frame energies
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    torch.manual_seed(0)
    model = So3krates(So3kratesConfig(**TINY_MODEL)).double()
    e_batch = predict(model, batch)["energy"]
    for k, f in enumerate(frames):
        e_one = predict(model, collate([f]))["energy"]
        torch.testing.assert_close(e_batch[k : k + 1], e_one, rtol=1e-12, atol=1e-10)


def test_npz_with_node_mask_and_splits(tmp_path):
    pos = np.random.default_rng(0).normal(size=(5, 4, 3))
    z = np.array([[1, 8, 1, 0]] * 5)
    mask = z > 0
    np.savez(tmp_path / "d.npz", positions=pos, atomic_numbers=z.astype(float), node_mask=mask,
             energy=np.arange(5.0), forces=np.zeros((5, 4, 3)))
    frames = read_frames(tmp_path / "d.npz")
    assert len(frames) == 5 and all(f.num_atoms == 3 for f in frames)
    assert frames[2].energy == 2.0 and frames[0].forces.shape == (3, 3)
    s1 = split_indices(100, 0.7, 0.2, seed=4)
    s2 = split_indices(100, 0.7, 0.2, seed=4)
    assert [len(s1[k]) for k in ("train", "valid", "test")] == [70, 20, 10]
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert len(set(np.concatenate(list(s1.values())))) == 100
    np.savetxt(tmp_path / "tr.txt", [0, 2, 4], fmt="%d")
    s3 = split_indices(5, index_files={"train": tmp_path / "tr.txt"})
    assert s3["train"].tolist() == [0, 2, 4] and len(s3["valid"]) == 0


def test_evaluate_prints_per_element_metrics(trained_run, dataset, tmp_path, capsys):
    out = tmp_path / "pred.extxyz"
    m = evaluate_main(str(trained_run / "best.ckpt"), str(dataset), str(out), progress=False)
    text = capsys.readouterr().out
    for sym in ("H", "C", "O"):
        assert sym in m["per_element"]
        assert any(line.split()[:1] == [sym] for line in text.splitlines()), text
    assert "energy/atom" in text and "forces" in text
    assert m["num_frames"] == 24 and m["forces_mae"] > 0
    images = ase.io.read(out, ":")
    assert len(images) == 24
    assert "ref_energy" in images[0].info and "ref_forces" in images[0].arrays
    # the predictions file holds the model's energies, not the references
    ref = np.array([a.info["ref_energy"] for a in images])
    pred = np.array([a.get_potential_energy() for a in images])
    assert np.mean(np.abs(pred - ref)) == pytest.approx(m["energy_mae"], rel=1e-6)


def test_early_stopping_and_schedules(dataset, tmp_path):
    # lr = 0: the validation loss never improves after the first validation -> stop at the second
    run = train_main(_write_cfg(tmp_path, _cfg(dataset, tmp_path / "es", lr=0.0, patience=1, max_steps=30, ema_decay=None,
                                                 optimizer="adamw", weight_decay=0.01)))
    ck = load_checkpoint(run / "last.ckpt")
    assert ck["step"] == 6 and ck["finished"] and ck["bad_evals"] == 1
    f = make_lr_lambda({"warmup_steps": 4, "lr_decay": "cosine", "min_lr_ratio": 0.1}, total_steps=24)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(23) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    g = make_lr_lambda({"lr_decay": "exponential", "lr_decay_rate": 0.5, "lr_decay_steps": 10}, total_steps=100)
    assert g(10) == pytest.approx(0.5) and g(20) == pytest.approx(0.25)


def test_stress_and_forces_match_finite_differences():
    from ase.build import bulk

    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    atoms = bulk("Cu", "fcc", a=3.6) * (1, 1, 2)
    atoms.rattle(0.1, seed=2)
    frame = frames_from_atoms([atoms])[0]
    torch.manual_seed(0)
    model = So3krates(So3kratesConfig(**TINY_MODEL)).double()
    frame_neighbors(frame, 4.0)
    p = predict(model, collate([frame]), compute_forces=True, compute_stress=True)

    def energy(pos, cell):
        g = copy.deepcopy(frame)
        g.positions, g.cell = pos, cell
        frame_neighbors(g, 4.0)
        return float(predict(model, collate([g]), compute_forces=False)["energy"].detach())

    h, vol = 1e-4, abs(np.linalg.det(frame.cell))
    for a, b in ((0, 0), (0, 1), (2, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] += h / 2
        eps[b, a] += h / 2
        up, dn = np.eye(3) + eps, np.eye(3) - eps
        fd = (energy(frame.positions @ up, frame.cell @ up) - energy(frame.positions @ dn, frame.cell @ dn)) / (2 * h * vol)
        assert float(p["stress"][0, a, b]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    d = np.zeros_like(frame.positions)
    d[1, 2] = h
    fd = -(energy(frame.positions + d, frame.cell) - energy(frame.positions - d, frame.cell)) / (2 * h)
    assert float(p["forces"][1, 2]) == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_evaluate_exported_model_matches_checkpoint(trained_run, dataset, tmp_path):
    import so3krates.export.exporter as exporter
    pt = tmp_path / "model.pt"
    exporter.export_checkpoint(str(trained_run / "best.ckpt"), str(pt), dtype="float64")
    from so3krates.potential.train.evaluate import predict_frames

    frames = read_frames(dataset)[:6]
    p_pt = predict_frames(str(pt), frames, progress=False)
    p_ck = predict_frames(str(trained_run / "best.ckpt"), frames, progress=False)
    for a, b in zip(p_pt, p_ck):
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-8)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-8)


# ---------------------------------------------------------------------------------------------
def _cu_frames(n, seed=0):
    """Rattled, randomly strained fcc Cu cells (8 atoms, periodic) labelled with ASE's EMT:
    energy (eV), forces (eV/Å) and stress (eV/Å³)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
        eps = rng.uniform(-0.03, 0.03, (3, 3))
        eps = 0.5 * (eps + eps.T)
        a.set_cell(a.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        out.append(a)
    return out


def test_stress_training_lowers_the_stress_error(tmp_path):
    path = tmp_path / "cu.extxyz"
    ase.io.write(path, _cu_frames(20))
    frames = read_frames(path)
    assert all(f.stress is not None and f.pbc.all() for f in frames)
    assert np.std([f.stress[0, 0] for f in frames]) > 5e-3  # the strains give a real stress signal (eV/Å³)
    cfg = {"run_dir": str(tmp_path / "run"), "seed": 0, "model": dict(TINY_MODEL),
           "data": {"path": str(path), "split": {"train": 14, "valid": 6, "test": 0, "seed": 0}},
           "training": {"batch_size": 4, "lr": 5e-3, "progress": False, "max_steps": 96, "eval_every": 8,
                        "ema_decay": None, "lr_decay": "none",
                        "loss_weights": {"energy": 1.0, "forces": 1.0, "stress": 1000.0}}}
    run = train_main(_write_cfg(tmp_path, cfg))
    rows = _rows(run)
    s_mae = [float(r["valid_stress_mae"]) for r in rows]
    assert len(s_mae) == 12 and all(math.isfinite(x) for x in s_mae)
    assert min(s_mae[-3:]) < 0.65 * s_mae[0], s_mae  # eV/Å³; 0.018 -> 0.008 here
    # the stress term is in the training loss: same batch, loss with and without the stress weight
    model = model_from_checkpoint(run / "last.ckpt", dtype=torch.float64)
    attach_neighbors(frames[:4], TINY_MODEL["cutoff"], progress=False)
    batch = collate(frames[:4])
    pred = predict(model, batch, compute_stress=True)
    l_with, st = loss_and_metrics(pred, batch, {"energy": 1.0, "forces": 1.0, "stress": 1000.0})
    l_without, _ = loss_and_metrics(pred, batch, {"energy": 1.0, "forces": 1.0, "stress": 0.0})
    mse = float((pred["stress"] - batch.stress).pow(2).mean())
    assert float((l_with - l_without).detach()) == pytest.approx(1000.0 * mse, rel=1e-9)
    assert st["s_n"] == 4 * 9


def test_time_budget_stops_the_run_and_can_be_extended(dataset, tmp_path):
    # the CPU clock: 2 s of this process's CPU time are ~100 steps of the tiny model whatever else runs
    # on the machine; 2 s of wall time can be fewer than 4 steps on a loaded one (the wall clock's
    # accounting is the same code, checked with a fake clock in test_time_budget_accounting)
    cfg = _cfg(dataset, tmp_path / "tb", epochs=100000, time_budget_s=2.0, time_budget_clock="cpu",
               lr_decay="cosine", min_lr_ratio=0.05, eval_every=20)
    path = _write_cfg(tmp_path, cfg)
    run = train_main(path)
    ck = load_checkpoint(run / "last.ckpt")
    assert ck["finished"] and ck["stopped_by"] == "time_budget"
    assert 2.0 <= ck["budget_used_s"] < 2.0 + 5.0
    rows = _rows(run)
    assert int(rows[-1]["step"]) == ck["step"] > 4  # a validation row at the step where the budget ran out
    assert float(rows[-1]["lr"]) == pytest.approx(3e-3 * 0.05, rel=1e-6)  # the cosine ends with the budget
    assert (run / "test_metrics.json").is_file()
    # resuming with the same budget does nothing; a larger budget continues the run
    train_main(path, resume=True)
    assert load_checkpoint(run / "last.ckpt")["step"] == ck["step"]
    train_main(path, resume=True, overrides={"training.time_budget_s": 3.0})
    ck2 = load_checkpoint(run / "last.ckpt")
    assert ck2["step"] > ck["step"] and ck2["stopped_by"] == "time_budget" and ck2["budget_used_s"] >= 3.0
    with pytest.raises(ValueError, match="time_budget_clock"):
        load_config(path, {"training.time_budget_clock": "sundial"})


def test_time_budget_accounting():
    """Only the time between start() and stop() counts, on top of the seconds of earlier invocations
    (--resume); the clock is time.perf_counter (wall) or time.process_time (cpu)."""
    import time

    from so3krates.potential.train.time_budget import CLOCKS, TimeBudget

    assert CLOCKS == {"wall": time.perf_counter, "cpu": time.process_time}
    now = [100.0]
    budget = TimeBudget(10.0, lambda: now[0], used=4.0)
    now[0] = 150.0
    assert budget.used() == 4.0 and not budget.spent()  # before the loop: nothing counts
    budget.start()
    now[0] = 155.0
    assert budget.used() == 9.0 and budget.fraction() == pytest.approx(0.9) and not budget.spent()
    now[0] = 156.0
    assert budget.spent()
    now[0] = 155.0
    budget.sample()  # one reading per step: the schedule and the stop decision see the same seconds
    now[0] = 158.0
    assert budget.fraction() == pytest.approx(0.9) and not budget.spent() and budget.used() == 12.0
    budget.sample()
    assert budget.fraction() == pytest.approx(1.2) and budget.spent()
    now[0] = 156.0
    budget.stop()
    now[0] = 500.0
    assert budget.used() == 10.0 and budget.spent()  # after the loop: nothing counts
    assert not TimeBudget(None).spent()


def test_float32_training_float64_evaluation(trained_run, dataset):
    """The validation copy (float64) of a float32-trained model equals the same weights in a model
    built in float64: exact constants, no float32 rounding; the validation loss in metrics.csv is
    what a float64 evaluation of best.ckpt gives."""
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    ck = load_checkpoint(trained_run / "best.ckpt")
    model32 = model_from_checkpoint(trained_run / "best.ckpt")
    assert next(model32.parameters()).dtype == torch.float32
    ev = make_eval_model(model32, torch.float64)
    assert next(model32.parameters()).dtype == torch.float32  # the training model is untouched
    direct = So3krates(So3kratesConfig.from_dict(ck["config"])).double()
    direct.load_state_dict(ck["ema_state_dict"])
    for (name, a), (_, b) in zip(direct.named_buffers(), ev.named_buffers()):
        assert a.dtype == b.dtype and (b.dtype == torch.float64 or not b.is_floating_point()), name
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(direct.named_parameters(), ev.named_parameters()):
        assert torch.equal(a, b), name
    rows = _rows(trained_run)
    best = [r for r in rows if float(r["valid_loss"]) == float(r["best_valid_loss"])][-1]
    idx = split_indices(24, 16, 4, 4, seed=1)["valid"]
    frames = [read_frames(dataset)[i] for i in idx]
    attach_neighbors(frames, TINY_MODEL["cutoff"], progress=False)
    res = evaluate_frames(ev, frames, 32, torch.float64, weights={"energy": 1.0, "forces": 10.0, "stress": 0.0},
                            progress=False)
    assert res["loss"] == pytest.approx(float(best["valid_loss"]), rel=1e-12)
    res32 = evaluate_frames(model32, frames, 32, torch.float32, weights={"energy": 1.0, "forces": 10.0, "stress": 0.0},
                              progress=False)
    assert res32["loss"] != pytest.approx(float(best["valid_loss"]), rel=1e-12)  # float32 would be different


def test_evaluate_on_an_index_file(trained_run, dataset, tmp_path):
    np.savetxt(tmp_path / "idx.txt", [3, 0, 7], fmt="%d")
    m = evaluate_main(str(trained_run / "best.ckpt"), str(dataset), progress=False, indices=str(tmp_path / "idx.txt"))
    frames = read_frames(dataset)
    assert m["num_frames"] == 3 and m["num_atoms"] == sum(frames[i].num_atoms for i in (3, 0, 7))
    np.savetxt(tmp_path / "bad.txt", [0, 24], fmt="%d")
    with pytest.raises(ValueError, match="outside"):
        evaluate_main(str(trained_run / "best.ckpt"), str(dataset), progress=False, indices=str(tmp_path / "bad.txt"))


def test_split_by_trajectory_holds_out_the_end_of_each_trajectory():
    ids = [f"gas/t{t:02d}/f{k:05d}" for t in range(2) for k in range(20)]
    ids += [f"cut/s{s:03d}/c{c:03d}" for s in range(10) for c in range(3)]  # snapshots with 3 cut-outs each
    ids += ["short/t00/f00000", "short/t00/f00001", "no_time_label"]
    sp = split_by_trajectory(ids, valid=0.05, test=0.10, gap=1)
    name = {i: k for k, v in sp.items() for i in v.tolist()}
    assert sorted(name) == list(range(len(ids)))  # every frame exactly once
    traj0 = [name[i] for i in range(20)]
    assert traj0 == ["train"] * 15 + ["dropped", "valid", "dropped", "test", "test"]
    cut = [name[40 + 3 * s] for s in range(10)]
    assert cut == ["train"] * 6 + ["dropped", "valid", "dropped", "test"]
    for s in range(10):  # the cut-outs of one snapshot share a time point: never split apart
        assert len({name[40 + 3 * s + c] for c in range(3)}) == 1
    assert {name[70], name[71], name[72]} == {"train"}  # short series and unlabelled frames train


def test_split_by_trajectory_script_writes_index_files(tmp_path):
    import importlib.util

    from helpers import ROOT

    images = make_molecules(30, seed=4)
    for k, a in enumerate(images):
        a.info["frame_id"] = f"mol/t{k // 15:02d}/f{k % 15:05d}"
        a.info["subset"] = "mol"
    ase.io.write(tmp_path / "d.extxyz", images)
    spec = importlib.util.spec_from_file_location("split_script", ROOT / "examples" / "training" / "split_by_trajectory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "d.extxyz"), "-o", str(tmp_path / "s")]) == 0
    idx = {k: np.loadtxt(tmp_path / "s" / f"{k}.txt", dtype=int, ndmin=1).tolist() for k in ("train", "valid", "test")}
    assert idx["test"] == [13, 14, 28, 29] and idx["valid"] == [11, 26]
    split = split_indices(30, index_files={k: tmp_path / "s" / f"{k}.txt" for k in idx})
    assert split["train"].tolist() == idx["train"] == list(range(10)) + list(range(15, 25))


def test_data_path_list_reads_the_files_in_order(dataset, tmp_path):
    """data.path may list several files (relative to the YAML): one data set, in order, so the split
    of [a, b] equals the split of the file a + b."""
    frames = ase.io.read(dataset, ":")
    ase.io.write(tmp_path / "a.extxyz", frames[:10])
    ase.io.write(tmp_path / "b.extxyz", frames[10:])
    cfg = _cfg(dataset, tmp_path / "run")
    cfg["data"]["path"] = ["a.extxyz", "b.extxyz"]
    loaded = load_config(_write_cfg(tmp_path, cfg))
    assert loaded["data"]["path"] == [str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz")]
    split_list = load_splits(loaded["data"])
    cfg["data"]["path"] = str(dataset)
    split_one = load_splits(load_config(_write_cfg(tmp_path, cfg))["data"])
    for k in ("train", "valid", "test"):
        assert len(split_list[k]) == len(split_one[k])
        for x, y in zip(split_list[k], split_one[k]):
            np.testing.assert_allclose(x.positions, y.positions)
