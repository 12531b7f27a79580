"""Host synchronisations per MD step (docs/gpu.md): every read-back of a tensor value to the host (``.item()``,
``bool(t)``, ``int(t)``, ``nonzero``, ``torch.equal``) stalls a GPU run and is what keeps a step from being
captured as a CUDA graph. Counted on the CPU with torch's profiler (each read-back is an ATen call:
``_local_scalar_dense``, ``nonzero``, ``equal`` ...) in an exported file's call.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from helpers import ROOT, small_model
from so3krates.export.exporter import export_potential
from so3krates.export.loader import load_exported, set_neighbor_skin
from so3krates.potential.potential import So3kratesPotential
from test_consistency import water_box

READ_BACKS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::masked_select", "aten::_unique2",
              "aten::unique_consecutive", "aten::repeat_interleave", "aten::bincount", "aten::allclose"}


def host_syncs(module, *inputs) -> Counter:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        module(*inputs)
    return Counter({e.key: e.count for e in prof.key_averages() if e.key in READ_BACKS})


@pytest.fixture(scope="module")
def long_range_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("syncs") / "lr.pt"
    export_potential(So3kratesPotential(small_model(long_range=True, species=[1, 8])).eval(), path, dtype="float32")
    return path


@pytest.mark.parametrize("kind,expected", [("shipped", 4), ("long-range", 5)])
def test_a_step_that_reuses_the_pair_lists_reads_back_four_or_five_values(kind, expected, long_range_file):
    """With a pair-list skin, a step that reuses the lists reads back: the input checks (1, all flags at once),
    the lists' validity (1), the shell pairs within the cutoff (1 ``nonzero``; a model with long-range terms
    has a second list, +1) and the closest pair's distance (1). A new search reads back more (the cell
    list's sizes)."""
    path = ROOT / "examples" / "models" / "so3krates_demo.pt" if kind == "shipped" else long_range_file
    module, _ = load_exported(path)
    set_neighbor_skin(module, 1.0)
    atoms = water_box(3, seed=3)
    pos = torch.tensor(atoms.positions, dtype=torch.float32)
    args = (torch.tensor(atoms.numbers), torch.tensor(np.asarray(atoms.cell), dtype=torch.float32),
            torch.tensor(atoms.pbc), 0.0, 0.0, True, False)
    module(pos, *args)
    builds = int(module.potential.neighbor_list_builds)
    reuse = host_syncs(module, pos + 0.05, *args)
    assert int(module.potential.neighbor_list_builds) == builds  # the lists were reused
    assert sum(reuse.values()) == expected, dict(reuse)
    assert reuse["aten::nonzero"] == expected - 3, dict(reuse)
    search = host_syncs(module, pos + 1.0, *args)  # moved more than skin / 2: a new search
    assert int(module.potential.neighbor_list_builds) == builds + 1
    assert sum(search.values()) > sum(reuse.values())
