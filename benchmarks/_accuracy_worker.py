"""Train and test one peer MLIP (MACE or TorchMD-Net TensorNet) for ``benchmarks/accuracy.py``.

Runs with the python of the peer's own venv (``benchmarks/.peer_venvs/<name>/bin/python``) and
imports only torch, numpy, ase, tqdm and the peer package — never so3krates::

    <venv>/bin/python benchmarks/_accuracy_worker.py params.json result.json

``params.json`` (written by accuracy.py) names the data file, the split index files, the per-element
energy shifts E0 (eV, least squares on the training split, the same numbers so3krates fits), the
RMS force (eV/Å), the model size and the training settings shared by every model of the benchmark:
batch size, loss ``w_E·mean((ΔE/N)²) + w_F·mean(ΔF²)`` (eV, eV/Å), AMSGrad with linear warm-up and
a cosine decay that ends when the time budget does, gradient clipping, EMA of the weights,
validation (EMA weights) after every epoch keeping the best, and a time budget on the chosen clock
(``cpu``: process CPU time; ``wall``) that covers training steps and validations. The test split is
evaluated once, in float64, with the best EMA weights. Units: Å, eV, eV/Å.
"""

from __future__ import annotations

import copy
import json
import math
import random
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


# ------------------------------------------------------------------------------------------ data
def read_split(params):
    import ase.io

    images = ase.io.read(params["data"], ":")
    out = {}
    for name, path in params["split_files"].items():
        idx = np.loadtxt(path, dtype=np.int64, ndmin=1)
        out[name] = [images[int(i)] for i in idx]
    return out


def labels(atoms):
    return (float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), dtype=np.float64),
            float(atoms.info.get("total_charge", atoms.info.get("charge", 0.0))))


# ---------------------------------------------------------------------------------- model adapters
class MaceAdapter:
    """ScaleShiftMACE (mace-torch 0.3.16) with a total-charge embedding; E0s inside the model."""

    def __init__(self, params, species, train_images):
        from mace.data import AtomicData, KeySpecification, config_from_atoms
        from mace.modules import RealAgnosticResidualInteractionBlock, ScaleShiftMACE
        from mace.tools import utils as mutils
        from e3nn import o3

        self._AtomicData, self._config_from_atoms = AtomicData, config_from_atoms
        self.keyspec = KeySpecification(info_keys={"energy": "REF_energy", "total_charge": "total_charge"},
                                        arrays_keys={"forces": "REF_forces"})
        a = params["arch"]
        self.cutoff = float(a["cutoff"])
        self.z_table = mutils.AtomicNumberTable(list(species))
        e0 = np.array([params["e0"][str(z)] for z in species], dtype=np.float64)
        train_items = [self.item(x) for x in train_images]
        n_edges = sum(int(d.edge_index.shape[1]) for d in train_items)
        n_atoms = sum(int(d.num_nodes) for d in train_items)
        avg_nb = n_edges / max(n_atoms, 1)
        inter = [(labels(x)[0] - sum(params["e0"][str(z)] for z in x.numbers)) / len(x) for x in train_images]
        self.model = ScaleShiftMACE(
            r_max=self.cutoff, num_bessel=int(a.get("num_bessel", 8)), num_polynomial_cutoff=5,
            max_ell=int(a["max_ell"]), interaction_cls=RealAgnosticResidualInteractionBlock,
            interaction_cls_first=RealAgnosticResidualInteractionBlock, num_interactions=int(a["num_interactions"]),
            num_elements=len(species), hidden_irreps=o3.Irreps(a["hidden_irreps"]),
            MLP_irreps=o3.Irreps(a.get("MLP_irreps", "16x0e")), atomic_energies=e0, avg_num_neighbors=avg_nb,
            atomic_numbers=list(species), correlation=int(a["correlation"]), gate=torch.nn.functional.silu,
            radial_MLP=list(a.get("radial_MLP", [64, 64, 64])),
            embedding_specs={"total_charge": {"type": "categorical", "per": "graph", "num_classes": 9, "offset": 4,
                                              "emb_dim": int(a.get("charge_emb_dim", 16))}},
            atomic_inter_scale=float(params["force_rms"]), atomic_inter_shift=float(np.mean(inter)))
        self.description = (f"MACE {a['hidden_irreps']}, max_ell {a['max_ell']}, correlation {a['correlation']}, "
                            f"{a['num_interactions']} layers, {self.cutoff} Å, charge embedding; "
                            f"avg_num_neighbors {avg_nb:.2f}")

    def item(self, atoms):
        e, f, q = labels(atoms)
        a = atoms.copy()
        a.calc = None
        a.info = {"REF_energy": e, "total_charge": q}
        a.arrays["REF_forces"] = f
        return self._AtomicData.from_config(self._config_from_atoms(a, key_specification=self.keyspec),
                                            z_table=self.z_table, cutoff=self.cutoff)

    @staticmethod
    def collate(items, dtype):
        from mace.tools.torch_geometric.batch import Batch

        b = Batch.from_data_list(items).to_dict()
        return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in b.items()}

    @staticmethod
    def targets(batch):
        n = torch.bincount(batch["batch"], minlength=int(batch["ptr"].numel()) - 1)
        return batch["energy"], batch["forces"], n

    def forward(self, model, batch, training):
        out = model(batch, training=training, compute_force=True)
        return out["energy"], out["forces"]


class TensorNetAdapter:
    """TorchMD-Net 3.1 TensorNet (``create_model``, Scalar head, forces by autograd, total charge q);
    E0s added outside the network, atomic outputs scaled by the RMS force."""

    def __init__(self, params, species, train_images):
        from torchmdnet.models.model import create_model

        a = params["arch"]
        args = dict(model="tensornet", embedding_dimension=int(a["embedding_dimension"]),
                    num_layers=int(a["num_layers"]), num_rbf=int(a["num_rbf"]), rbf_type="expnorm",
                    trainable_rbf=False, activation="silu", cutoff_lower=0.0, cutoff_upper=float(a["cutoff"]),
                    max_z=int(max(species)) + 1, max_num_neighbors=int(a.get("max_num_neighbors", 128)),
                    equivariance_invariance_group="O(3)", static_shapes=False, derivative=True, atom_filter=-1,
                    prior_model=None, output_model="Scalar", reduce_op="add", precision=32,
                    output_mlp_num_layers=0)
        self.model = create_model(args, std=torch.tensor(float(params["force_rms"])))
        self.e0 = torch.zeros(int(max(species)) + 1, dtype=torch.float64)
        for z in species:
            self.e0[z] = float(params["e0"][str(z)])
        self.description = (f"TensorNet {a['embedding_dimension']} channels, {a['num_layers']} layers, "
                            f"{a['num_rbf']} rbf, {a['cutoff']} Å, total charge q")

    def item(self, atoms):
        e, f, q = labels(atoms)
        return dict(z=torch.tensor(atoms.numbers, dtype=torch.long), pos=torch.tensor(atoms.positions),
                    energy=e, forces=torch.tensor(f), q=q)

    def collate(self, items, dtype):
        n = torch.tensor([len(it["z"]) for it in items])
        z = torch.cat([it["z"] for it in items])
        return dict(z=z, pos=torch.cat([it["pos"] for it in items]).to(dtype),
                    batch=torch.repeat_interleave(torch.arange(len(items)), n), n=n,
                    q=torch.tensor([it["q"] for it in items], dtype=torch.long),
                    energy=torch.tensor([it["energy"] for it in items], dtype=dtype),
                    e0=torch.zeros(len(items), dtype=torch.float64).index_add_(
                        0, torch.repeat_interleave(torch.arange(len(items)), n), self.e0[z]).to(dtype),
                    forces=torch.cat([it["forces"] for it in items]).to(dtype))

    @staticmethod
    def targets(batch):
        return batch["energy"], batch["forces"], batch["n"]

    def forward(self, model, batch, training):
        y, neg_dy = model(batch["z"], batch["pos"].detach().clone(), batch["batch"], q=batch["q"],
                          num_systems=int(batch["n"].numel()))
        return y.reshape(-1) + batch["e0"], neg_dy


ADAPTERS = {"mace": MaceAdapter, "torchmd-net": TensorNetAdapter}


# ------------------------------------------------------------------------------------ training
class EMA:
    """The same weight EMA as so3krates' trainer: decay_t = min(decay, (1+t)/(10+t))."""

    def __init__(self, model, decay):
        self.decay, self.n = float(decay), 0
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model):
        self.n += 1
        d = min(self.decay, (1.0 + self.n) / (10.0 + self.n))
        for k, p in model.named_parameters():
            self.shadow[k].mul_(d).add_(p.detach(), alpha=1.0 - d)

    def state(self, model):
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        sd.update({k: v.detach().clone() for k, v in self.shadow.items()})
        return sd


def batches(items, size, rng=None):
    order = list(range(len(items)))
    if rng is not None:
        rng.shuffle(order)
    for k in range(0, len(order), size):
        yield [items[i] for i in order[k:k + size]]


def loss_terms(e_pred, f_pred, e_ref, f_ref, n, w):
    de = (e_pred - e_ref) / n.to(e_pred.dtype)
    return float(w["energy"]) * de.pow(2).mean() + float(w["forces"]) * (f_pred - f_ref).pow(2).mean()


def predict_all(adapter, model, items, batch_size, dtype):
    """Energies [M] (eV) and forces [N,3] (eV/Å) of ``items`` in file order."""
    e_all, f_all = [], []
    model.eval()
    for chunk in batches(items, batch_size):
        b = adapter.collate(chunk, dtype)
        with torch.enable_grad():
            e, f = adapter.forward(model, b, False)
        e_all.append(e.detach().double().numpy())
        f_all.append(f.detach().double().numpy())
    return np.concatenate(e_all), np.concatenate(f_all)


def validation_loss(adapter, model, items, batch_size, dtype, w):
    total, frames = 0.0, 0
    model.eval()
    for chunk in batches(items, batch_size):
        b = adapter.collate(chunk, dtype)
        with torch.enable_grad():
            e, f = adapter.forward(model, b, False)
        e_ref, f_ref, n = adapter.targets(b)
        total += float(loss_terms(e.detach(), f.detach(), e_ref, f_ref, n, w)) * len(chunk)
        frames += len(chunk)
    return total / max(frames, 1)


def metrics(images, e_pred, f_pred):
    from ase.data import chemical_symbols

    e_ref = np.array([labels(a)[0] for a in images])
    n = np.array([len(a) for a in images], dtype=float)
    f_ref = np.concatenate([labels(a)[1] for a in images])
    z = np.concatenate([a.numbers for a in images])
    de, df = e_pred - e_ref, f_pred - f_ref
    per = {chemical_symbols[int(k)]: {"Z": int(k), "num_atoms": int((z == k).sum()),
                                      "forces_mae": float(np.abs(df[z == k]).mean()),
                                      "forces_rmse": float(np.sqrt((df[z == k] ** 2).mean()))} for k in np.unique(z)}
    return dict(num_frames=len(images), num_atoms=int(n.sum()), energy_mae=float(np.abs(de).mean()),
                energy_rmse=float(np.sqrt((de ** 2).mean())), energy_per_atom_mae=float(np.abs(de / n).mean()),
                energy_per_atom_rmse=float(np.sqrt(((de / n) ** 2).mean())), forces_mae=float(np.abs(df).mean()),
                forces_rmse=float(np.sqrt((df ** 2).mean())), per_element=per)


def main(params_path, result_path):
    from tqdm.auto import tqdm

    params = json.loads(Path(params_path).read_text())
    torch.set_num_threads(int(params.get("threads", 1)))
    seed = int(params.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float32)
    t_setup = time.perf_counter()
    split = read_split(params)
    species = sorted({int(z) for imgs in split.values() for a in imgs for z in a.numbers})
    adapter = ADAPTERS[params["model"]](params, species, split["train"])
    model = adapter.model.float()
    items = {k: [adapter.item(a) for a in tqdm(v, desc=f"{k} graphs", leave=False, disable=not params.get("progress"))]
             for k, v in split.items()}
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"[{params['model']}] {adapter.description}; {n_params} parameters; "
          f"{', '.join(f'{len(v)} {k}' for k, v in items.items())} frames; setup {time.perf_counter() - t_setup:.1f} s",
          flush=True)

    t = params["training"]
    w = t["loss_weights"]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=float(t["lr"]), amsgrad=True)
    budget = float(t["time_budget_s"])
    clock = time.process_time if t.get("clock", "cpu") == "cpu" else time.perf_counter
    warm, min_ratio = int(t.get("warmup_steps", 0)), float(t.get("min_lr_ratio", 0.02))
    ema = EMA(model, float(t["ema_decay"]))
    rng = random.Random(seed)
    f32 = torch.float32
    step, epoch, best, best_state, history = 0, 0, math.inf, None, []
    # warm-up outside the budget: TorchMD-Net 3.1 JIT-compiles its Warp kernels on first use (tens of
    # seconds on CPU, cached afterwards); one forward/backward without an optimizer step, no state change
    tw = time.perf_counter()
    b = adapter.collate(items["train"][: int(t["batch_size"])], f32)
    e, f = adapter.forward(model, b, True)
    loss_terms(e, f, *adapter.targets(b), w).backward()
    opt.zero_grad(set_to_none=True)
    ev = copy.deepcopy(model)
    validation_loss(adapter, ev, items["valid"][: int(t["valid_batch_size"])], int(t["valid_batch_size"]), f32, w)
    del ev
    print(f"[{params['model']}] warm-up (kernel compilation, not counted) {time.perf_counter() - tw:.1f} s", flush=True)
    c0, w0 = clock(), time.perf_counter()
    used = lambda: clock() - c0  # noqa: E731
    done = False
    bar = tqdm(total=round(budget), desc=f"{params['model']} training ({t.get('clock', 'cpu')} s)", unit="s",
               disable=not params.get("progress"))
    while not done:
        model.train()
        running, nb = 0.0, 0
        for chunk in batches(items["train"], int(t["batch_size"]), rng):
            b = adapter.collate(chunk, f32)
            e, f = adapter.forward(model, b, True)
            e_ref, f_ref, n = adapter.targets(b)
            loss = loss_terms(e, f, e_ref, f_ref, n, w)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{params['model']}: loss became {float(loss)} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(t["gradient_clip"]))
            frac = min(1.0, used() / budget)
            mult = min(1.0, (step + 1) / warm) if warm else 1.0
            mult *= min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = float(t["lr"]) * mult
            opt.step()
            ema.update(model)
            step += 1
            running += float(loss.detach())
            nb += 1
            bar.n = min(round(used()), bar.total)
            bar.set_postfix(step=step, loss=f"{float(loss.detach()):.4g}", refresh=False)
            bar.refresh()
            if used() >= budget:
                done = True
                break
        epoch += 1
        ev = copy.deepcopy(model)
        ev.load_state_dict(ema.state(model))
        vl = validation_loss(adapter, ev, items["valid"], int(t["valid_batch_size"]), f32, w)
        history.append(dict(step=step, epoch=epoch, train_loss=running / max(nb, 1), valid_loss=vl,
                            budget_used_s=round(used(), 2), lr=opt.param_groups[0]["lr"]))
        print(f"[{params['model']}] epoch {epoch} step {step}: train loss {running / max(nb, 1):.4g}, "
              f"valid loss {vl:.4g} ({used():.0f}/{budget:.0f} s)", flush=True)
        if vl < best:
            best, best_state = vl, ema.state(model)
        if used() >= budget:
            done = True
    bar.close()
    train_used, train_wall = used(), time.perf_counter() - w0

    final = copy.deepcopy(model)
    final.load_state_dict(best_state)
    final = final.double().eval()
    e_pred, f_pred = predict_all(adapter, final, items["test"], int(t["valid_batch_size"]), torch.float64)
    res = dict(model=params["model"], status="ok", description=adapter.description, parameters=int(n_params),
               trainable_parameters=int(n_trainable), steps=step, epochs=round(step / max(1, math.ceil(
                   len(items["train"]) / int(t["batch_size"]))), 3),
               train_time_s=round(train_used, 2), train_wall_s=round(train_wall, 2), clock=t.get("clock", "cpu"),
               best_valid_loss=best, history=history, eval_dtype="float64",
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               torch=torch.__version__, test=metrics(split["test"], e_pred, f_pred))
    Path(result_path).write_text(json.dumps(res, indent=1))
    print(f"[{params['model']}] test: force MAE {res['test']['forces_mae']:.4f} eV/Å, energy MAE "
          f"{res['test']['energy_mae']:.4f} eV ({1e3 * res['test']['energy_per_atom_mae']:.2f} meV/atom)", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: <peer venv python> _accuracy_worker.py params.json result.json")
    main(sys.argv[1], sys.argv[2])
