"""The fused CPU kernels (plugins/ops/*.cpp, ``so3krates export --fused-kernels``):
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


def _tables_and_pairs(n=23, p=211, f=32, seed=2):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(n, f, generator=g, dtype=torch.float64) for _ in range(2))
    ii, jj = torch.randint(0, n, (p,), generator=g), torch.randint(0, n, (p,), generator=g)
    w = torch.randn(p, f, generator=g, dtype=torch.float64)
    ga_ij, ga_ji = torch.randn(p, 4, generator=g, dtype=torch.float64), torch.randn(p, 4, generator=g, dtype=torch.float64)
    return q, k, ii, jj, w, ga_ij, ga_ji


@pytest.mark.parametrize("threads", [1, 2])
def test_indexed_logits_equal_the_gathered_kernels(threads):
    """``attention_logits[_backward]_indexed`` read q, k through the pair indices and add their gradients onto
    the atoms: the same numbers as gathering, the gathered kernels and index_add (with 2 threads each thread
    adds into its own accumulators: 211 pairs are too few to split, so 4000 are used there)."""
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, ii, jj, w, ga_ij, ga_ji = _tables_and_pairs(p=211 if threads == 1 else 4000)
        ops = torch.ops.so3krates
        a = ops.attention_logits(q[ii], k[jj], q[jj], k[ii], w, 4, 0.3)
        b = ops.attention_logits_indexed(q, k, ii, jj, w, 4, 0.3)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        r = ops.attention_logits_backward(q[ii], q[jj], k[ii], k[jj], w, ga_ij, ga_ji, 0.3, True)
        g_q0 = torch.full_like(q, 0.5)  # the kernel adds to what is there
        g_q, g_k = g_q0.clone(), torch.zeros_like(k)
        g_w = ops.attention_logits_backward_indexed(q, k, ii, jj, w, ga_ij, ga_ji, 0.3, g_q, g_k, True)
        assert torch.equal(g_w, r[4])
        assert torch.allclose(g_q, g_q0.index_add(0, ii, r[0]).index_add(0, jj, r[1]), rtol=1e-13, atol=1e-13)
        assert torch.allclose(g_k, torch.zeros_like(k).index_add(0, ii, r[2]).index_add(0, jj, r[3]),
                              rtol=1e-13, atol=1e-13)
        untouched = torch.zeros_like(q)
        g_w2 = ops.attention_logits_backward_indexed(q, k, ii, jj, w, ga_ij, ga_ji, 0.3, untouched, untouched, False)
        assert torch.equal(g_w2, r[4]) and not untouched.any()
    finally:
        torch.set_num_threads(was)


@pytest.mark.parametrize("threads", [1, 2])
def test_indexed_values_equal_gather_multiply_scatter(threads):
    """``attention_values[_backward]_indexed``: the invariant messages alpha_ij[head] v[j] summed onto i (and
    alpha_ji v[i] onto j) and their backward, against the gathered ATen formulation and autograd."""
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, v, ii, jj, _, _, _ = _tables_and_pairs(p=211 if threads == 1 else 4000)
        p, n = ii.shape[0], v.shape[0]
        g = torch.Generator().manual_seed(7)
        a_ij = torch.randn(p, 4, generator=g, dtype=torch.float64).requires_grad_(True)
        a_ji = torch.randn(p, 4, generator=g, dtype=torch.float64).requires_grad_(True)
        vv = v.clone().requires_grad_(True)
        want = (torch.zeros_like(v).index_add(0, ii, (a_ij.unsqueeze(-1) * vv[jj].view(p, 4, 8)).view(p, 32))
                .index_add(0, jj, (a_ji.unsqueeze(-1) * vv[ii].view(p, 4, 8)).view(p, 32)))
        out = torch.full_like(v, 0.25)
        with torch.no_grad():
            torch.ops.so3krates.attention_values_indexed(a_ij, a_ji, v, ii, jj, out)
        assert torch.allclose(out - 0.25, want.detach(), rtol=1e-13, atol=1e-13)
        g_out = torch.randn(n, 32, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(want, [a_ij, a_ji, vv], grad_outputs=g_out)
        g_v = torch.zeros_like(v)
        with torch.no_grad():
            g1, g2 = torch.ops.so3krates.attention_values_backward_indexed(a_ij, a_ji, v, ii, jj, g_out, g_v, True)
            h1, h2 = torch.ops.so3krates.attention_values_backward_indexed(a_ij, a_ji, v, ii, jj, g_out,
                                                                           torch.empty(0), False)
        for x, y in ((g1, grads[0]), (g2, grads[1]), (g_v, grads[2]), (h1, grads[0]), (h2, grads[1])):
            assert torch.allclose(x, y, rtol=1e-13, atol=1e-13)
    finally:
        torch.set_num_threads(was)


def test_indexed_kernels_refuse_bad_indices_and_shapes():
    q, k, ii, jj, w, ga_ij, ga_ji = _tables_and_pairs()
    ops = torch.ops.so3krates
    with pytest.raises(RuntimeError, match=r"pair indices outside \[0, 23\)"):
        ops.attention_logits_indexed(q, k, ii, jj + 23, w, 4, 1.0)
    with pytest.raises(RuntimeError, match="pair indices outside"):
        ops.attention_logits_indexed(q, k, ii - 1, jj, w, 4, 1.0)
    with pytest.raises(RuntimeError, match="int64 pair indices"):
        ops.attention_logits_indexed(q, k, ii.int(), jj.int(), w, 4, 1.0)
    with pytest.raises(RuntimeError, match="for 211 pairs"):
        ops.attention_logits_indexed(q, k, ii[:5], jj, w, 4, 1.0)
    with pytest.raises(RuntimeError, match="gradient accumulators"):
        ops.attention_logits_backward_indexed(q, k, ii, jj, w, ga_ij, ga_ji, 1.0, torch.zeros(3, 32), q.clone(), True)
    with pytest.raises(RuntimeError, match="do not split into 5 heads"):
        ops.attention_values_indexed(ga_ij[:, :1].repeat(1, 5), ga_ji[:, :1].repeat(1, 5), k, ii, jj, q.clone())
    with pytest.raises(RuntimeError, match="per-atom tables must be contiguous"):
        ops.attention_values_indexed(ga_ij, ga_ji, k, ii, jj, q.t())
    with pytest.raises(RuntimeError, match="pair indices outside"):
        ops.attention_values_backward_indexed(ga_ij, ga_ji, k, ii, jj + 1000, q, q.clone(), True)


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
    # the kernels ran: the lean pass reads q and k through the pair indices (the engines' pair stages,
    # LAMMPS's, use the gathered-array kernels: test_every_engine_agrees_with_fused_kernels)
    assert {"so3krates::attention_logits_indexed", "so3krates::attention_logits_backward_indexed",
            "so3krates::attention_values_indexed", "so3krates::attention_values_backward_indexed",
            "so3krates::silu_and_derivative"} <= ran
    assert "so3krates::attention_logits" not in ran
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
