"""The fused CPU attention kernels (plugins/ops/fused_attention.cpp, ``so3krates export --fused-kernels``):
the operators against the ATen formulation, the lean pass with them, and a fused export in every engine
(TorchScript, ASE, OpenMM, LAMMPS on 1 and 2 ranks) against the eager model without them (float64, 1e-10)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from helpers import ROOT, small_model
from so3krates.export.exporter import export_checkpoint, export_potential, with_fused_kernels
from so3krates.export.loader import load_exported
from so3krates.export.metadata import read_metadata, summary_line
from so3krates.potential.nn import fused_ops
from so3krates.potential.nn.attention import AttentionBlock, segment_sum
from so3krates.potential.potential import So3kratesPotential
from test_consistency import _call, check_every_engine, water_box


def _composite_block(fused: bool) -> AttentionBlock:
    blk = AttentionBlock(32, 4, [1, 2], 8, "sqrt_num_features", 10.0, "silu", "identity").double()
    blk.fused_kernels = fused
    return blk


def _pair_arrays(p=37, f=32, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p, f, generator=g, dtype=dtype) for _ in range(5)]


def test_the_kernels_are_registered():
    assert fused_ops.load(), fused_ops._state.get("reason")
    assert hasattr(torch.ops.so3krates, "attention_logits")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 2e-5)])
def test_logits_equal_the_aten_formulation(dtype, tol):
    qi, kj, qj, ki, w = _pair_arrays(dtype=dtype)
    a_ij, a_ji = torch.ops.so3krates.attention_logits(qi, kj, qj, ki, w, 4, 0.25)
    assert torch.allclose(a_ij, segment_sum(qi * w * kj, 4, 0.25), rtol=tol, atol=tol)
    assert torch.allclose(a_ji, segment_sum(qj * w * ki, 4, 0.25), rtol=tol, atol=tol)
    # strided views (the engines' per-atom tables are sliced) give the same numbers
    wide = torch.cat([qi, kj], 1)
    b_ij, _ = torch.ops.so3krates.attention_logits(wide[:, :32], wide[:, 32:], qj, ki, w, 4, 0.25)
    assert torch.equal(b_ij, a_ij)


@pytest.mark.parametrize("inputs_grad", [True, False])
def test_logits_backward_equals_the_aten_formulation_and_autograd(inputs_grad):
    qi, qj, ki, kj, w = [t.requires_grad_(True) for t in _pair_arrays(seed=1)]
    ga_ij, ga_ji = torch.randn(37, 4, dtype=torch.float64), torch.randn(37, 4, dtype=torch.float64)
    with torch.no_grad():
        fused = torch.ops.so3krates.attention_logits_backward(qi, qj, ki, kj, w, ga_ij, ga_ji, 0.5, inputs_grad)
        aten = _composite_block(False).logits_backward(qi, qj, ki, kj, w, ga_ij, ga_ji, 0.5, inputs_grad)
    # autograd of the logits' definition
    loss = (segment_sum(qi * w * kj, 4, 0.5) * ga_ij).sum() + (segment_sum(qj * w * ki, 4, 0.5) * ga_ji).sum()
    grads = torch.autograd.grad(loss, [qi, qj, ki, kj, w])
    want = list(grads) if inputs_grad else [grads[4]]
    got = list(fused) if inputs_grad else [fused[4]]
    for x, y, z in zip(got, want, aten if inputs_grad else [aten[4]]):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-13)
        assert torch.allclose(x, z, rtol=1e-12, atol=1e-13)
    if not inputs_grad:
        assert all(t.numel() == 0 for t in fused[:4])


def test_bad_inputs_get_clear_errors():
    qi, kj, qj, ki, w = _pair_arrays()
    with pytest.raises(RuntimeError, match="do not split into 5 heads"):
        torch.ops.so3krates.attention_logits(qi, kj, qj, ki, w, 5, 1.0)
    with pytest.raises(RuntimeError, match="mixed dtypes"):
        torch.ops.so3krates.attention_logits(qi, kj.float(), qj, ki, w, 4, 1.0)
    with pytest.raises(RuntimeError, match="differs from"):
        torch.ops.so3krates.attention_logits(qi, kj[:5], qj, ki, w, 4, 1.0)
    with pytest.raises(RuntimeError, match=r"\[pairs, features\]"):
        torch.ops.so3krates.attention_logits(qi[0], kj[0], qj[0], ki[0], w[0], 4, 1.0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-14), (torch.float32, 2e-6)])
def test_silu_kernel_equals_silu_and_its_derivative(dtype, tol):
    """Against float64 autograd (float32: s + h (1 - s) loses ~10 ulp to cancellation for x ~ 20, as the
    ATen formulation does)."""
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(301, 40, generator=g, dtype=torch.float64) * 6).to(dtype)
    x[0, :8] = torch.tensor([-1000.0, -100.0, -80.0, -20.0, 20.0, 80.0, 100.0, 1000.0], dtype=dtype)
    view = torch.cat([x, x], 1)[:, 3:43]  # a strided view
    h, d = torch.ops.so3krates.silu_and_derivative(view, True)
    h_only, none = torch.ops.so3krates.silu_and_derivative(view, False)
    assert torch.equal(h, h_only) and none.numel() == 0 and h.dtype == dtype
    ref = view.double().requires_grad_(True)
    want_h = torch.nn.functional.silu(ref)
    (want_d,) = torch.autograd.grad(want_h.sum(), ref)
    scale = 1.0 + ref.detach().abs()  # relative to |x| (h ~ x for x >> 0)
    assert torch.isfinite(h).all() and torch.isfinite(d).all()
    assert ((h.double() - want_h.detach()).abs() / scale).max() < tol
    assert (d.double() - want_d).abs().max() < tol
    # far out: SiLU(x) = x for large x, 0 for very negative x, no NaN or infinity from exp
    far, d_far = torch.ops.so3krates.silu_and_derivative(x[:1, :8], True)
    assert far[0, 7] == 1000.0 and d_far[0, 7] == 1.0 and abs(float(far[0, 0])) < 1e-30


def test_silu_kernel_refuses_bad_inputs():
    with pytest.raises(RuntimeError, match="float32 or float64 expected"):
        torch.ops.so3krates.silu_and_derivative(torch.ones(3, 4, dtype=torch.int64), True)


def test_block_filters_with_the_silu_kernel_equal_without():
    fused, plain = _composite_block(True), _composite_block(False)
    plain.load_state_dict(fused.state_dict())
    g = torch.Generator().manual_seed(6)
    rbf, dev = torch.rand(53, 8, generator=g, dtype=torch.float64), torch.randn(53, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for x, y in zip(fused.filter_state(rbf, dev) + list(fused.filters(rbf, dev)),
                        plain.filter_state(rbf, dev) + list(plain.filters(rbf, dev))):
            assert torch.allclose(x, y, rtol=1e-13, atol=1e-14)


def test_block_uses_the_kernels_only_without_a_graph():
    """With a graph being recorded the block falls back to ATen ops (the kernels have no autograd)."""
    blk = _composite_block(True)
    p_i, p_j = _pair_arrays(seed=2), _pair_arrays(seed=3)
    w1, w2 = torch.randn(37, 32, dtype=torch.float64), torch.randn(37, 32, dtype=torch.float64)
    with torch.no_grad():
        fused = blk.logits(p_i, p_j, w1, w2)
    w1.requires_grad_(True)
    graph = blk.logits(p_i, p_j, w1, w2)
    assert graph[0].grad_fn is not None
    for x, y in zip(fused, graph):
        assert torch.allclose(x, y.detach(), rtol=1e-12, atol=1e-13)


@pytest.fixture(scope="module")
def fused_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("fused")
    eager = So3kratesPotential(small_model(long_range=True, species=[1, 8])).eval()
    meta = export_potential(eager, d / "fused.pt", dtype="float64", fused_kernels=True)
    export_potential(eager, d / "plain.pt", dtype="float64")
    return eager, d, meta


def test_fused_export_is_marked_and_calls_the_kernels(fused_export):
    _, d, meta = fused_export
    assert meta["fused_kernels"] is True and read_metadata(d / "fused.pt")["fused_kernels"] is True
    assert read_metadata(d / "plain.pt")["fused_kernels"] is False
    assert "fused CPU kernels" in summary_line(meta)
    assert "ops.so3krates.attention_logits_backward(" in _code(d / "fused.pt")
    assert "ops.so3krates.silu_and_derivative(" in _code(d / "fused.pt")
    assert "ops.so3krates" not in _code(d / "plain.pt")  # a plain file does not need the library


def _code(path) -> str:
    """The TorchScript code stored in an exported file."""
    with zipfile.ZipFile(path) as z:
        return "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))


def test_lean_pass_with_the_kernels_equals_without(fused_export):
    eager, _, _ = fused_export
    fused = with_fused_kernels(eager, True)
    assert fused is not eager and not eager.model.layers[0].attention_block.fused_kernels
    atoms = water_box(2, seed=4)
    pos, z, cell, pbc = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers),
                         torch.tensor(np.asarray(atoms.cell)), torch.tensor(atoms.pbc))
    ref = eager(pos, z, cell, pbc, 0.0, 0.0, True, True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fused(pos, z, cell, pbc, 0.0, 0.0, True, True)
    ran = {e.key for e in prof.key_averages()}
    assert {"so3krates::attention_logits", "so3krates::attention_logits_backward",
            "so3krates::silu_and_derivative"} <= ran  # the kernels ran
    for key in ("energy", "forces", "stress"):
        assert torch.allclose(out[key], ref[key], rtol=1e-10, atol=1e-11), key


def test_every_engine_agrees_with_fused_kernels(fused_export, tmp_path):
    """The consistency suite's engines on the fused file against the eager model without the kernels."""
    eager, d, meta = fused_export
    check_every_engine(eager, d / "fused.pt", meta, tmp_path, " (fused)")


def test_a_process_without_the_kernels_refuses_the_file_with_the_fix(fused_export):
    _, d, _ = fused_export
    code = ("from so3krates.export.loader import load_exported\n"
            f"load_exported({str(d / 'plain.pt')!r})\n"
            f"load_exported({str(d / 'fused.pt')!r})\n")
    env = dict(os.environ, SO3KRATES_FUSED_OPS="off")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "ModelFileError" in r.stderr and "fused CPU attention kernels" in r.stderr
    assert "SO3KRATES_FUSED_OPS=off" in r.stderr and "re-export the model without them" in r.stderr


def test_export_refuses_fused_kernels_where_they_cannot_run(tmp_path):
    ckpt = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
    with pytest.raises(ValueError, match="TorchScript files"):
        export_checkpoint(str(ckpt), str(tmp_path / "m.pt2"), fmt="pt2", fused_kernels=True)
    eager = So3kratesPotential(small_model()).eval()
    with pytest.raises(ValueError, match="CPU kernels|no CUDA device"):
        export_potential(eager, tmp_path / "m.pt", device="cuda", fused_kernels=True)
    assert not (tmp_path / "m.pt").exists()


def test_cli_export_flag(tmp_path):
    ckpt = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
    out = tmp_path / "demo_fused.pt"
    r = subprocess.run([sys.executable, "-m", "so3krates.cli", "export", str(ckpt), "-o", str(out), "--fused-kernels"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fused CPU kernels" in r.stdout
    fused, meta = load_exported(out)
    shipped, _ = load_exported(ROOT / "examples" / "models" / "so3krates_demo.pt")
    assert meta["fused_kernels"] is True and meta["dtype"] == "float32"
    atoms = water_box(2, seed=6)
    e, f = _call(fused, atoms.copy())
    e0, f0 = _call(shipped, atoms.copy())
    assert abs(e - e0) < 1e-4 * max(1.0, abs(e0)) and np.abs(f - f0).max() < 1e-3
