"""EFA learns interactions beyond the local receptive field (issue 3; short version of
``benchmarks/efa_longrange.py --quick``).

32 H atoms in a 5 Å sphere (EFA paper's ``3D_cluster_32_atoms_radius_5.npz``, ~1/r pair tail):
a 2-layer So3krates with a 2.5 Å cutoff (receptive field 5 Å < 10 Å diameter) against the same
model with EFA in both layers (gelu queries/keys, max_length 15 Å as in the paper), same parameter
budget (±5 %), seed, split and 150 training steps.

Measured local/EFA test ratios (seeds 0/1/2): the paper-style loss (0.01·E_MSE + 0.99·F_MSE)
19.9–20.7/13.3/12.1, energy MAE 4.7–4.8/4.1/3.6, force MAE 3.5–3.6/3.4/3.2 (a run reproduces
exactly for a fixed code version; the seed-0 ranges are two versions of the shared model code). Asserted: loss ratio ≥ 8 and both MAE ratios ≥ 2.5, i.e. ≥ 30 % below the smallest measured
value; with EFA switched off both models are local and every ratio is ~1 (the test fails).
Runtime: ~30 s on one core (~20 s of CPU; several minutes wall on a heavily shared machine).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIN_LOSS_RATIO = 8.0
MIN_MAE_RATIO = 2.5


def _bench():
    spec = importlib.util.spec_from_file_location("efa_longrange", ROOT / "benchmarks" / "efa_longrange.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("efa_longrange", mod)
    spec.loader.exec_module(mod)
    return mod


BENCH = _bench()
DATA = BENCH.default_data_dir()


def test_efa_beats_local_on_32_atom_clusters(tmp_path):
    import torch

    assert (DATA / BENCH.DATASETS["cluster32"]["file"]).exists(), \
        f"EFA paper data not found in {DATA} (CI provides ../shared; or set SO3KRATES_EFA_DATA)"

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = BENCH.compare("cluster32", seed=0, mode="quick", workdir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    local, efa = res["local"], res["efa"]
    # the comparison is what it claims to be
    assert res["receptive_field"] < 10.0  # 2 layers x cutoff < cluster diameter
    assert local["steps"] == efa["steps"] == BENCH.DATASETS["cluster32"]["quick"]["steps"]
    assert abs(local["params"] - efa["params"]) <= 0.05 * efa["params"], (local["params"], efa["params"])
    assert local["num_features"] > efa["num_features"]  # the local model got the extra parameters
    ratios = res["ratio_local_over_efa"]
    print("local/EFA test error ratios:", {k: round(v, 2) for k, v in ratios.items()})
    # the paper-style loss is what the verdict uses
    t = efa["test"]
    assert abs(t["paper_loss"] - (0.01 * t["energy_rmse"] ** 2 + 0.99 * t["forces_rmse"] ** 2)) < 1e-12
    assert res["verdict"]["ratio"] == ratios["paper_loss"]
    assert ratios["paper_loss"] >= MIN_LOSS_RATIO, (ratios, local["test"], efa["test"])
    assert ratios["forces_mae"] >= MIN_MAE_RATIO, (ratios, local["test"], efa["test"])
    assert ratios["energy_mae"] >= MIN_MAE_RATIO, (ratios, local["test"], efa["test"])
