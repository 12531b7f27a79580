// Fused CPU kernels of the So3krates attention (torch operator library libso3krates_ops.so).
//
// The attention logits of a pair (i, j) are per-head sums a_ij[s] = scale * sum_{f in head s}
// q_i[f] w_ij[f] k_j[f] (both directions share the filter w_ij). In ATen ops the forward and the
// backward are chains of elementwise products over [pairs, features] arrays, each a pass through
// memory; here each is one pass. Registered as
//   so3krates::attention_logits(q_i, k_j, q_j, k_i, w, int segments, float scale) -> (a_ij, a_ji)
//   so3krates::attention_logits_backward(q_i, q_j, k_i, k_j, w, ga_ij, ga_ji, float scale,
//                                        bool inputs_grad) -> (g_q_i, g_q_j, g_k_i, g_k_j, g_w)
// for CPU tensors (float32 / float64). No autograd formula: the model calls them only without a
// graph (the memory-lean pass and the engines' stages), and falls back to ATen ops otherwise
// (potential/nn/attention.py). Loaded by `so3krates.potential.nn.fused_ops` in Python and linked by
// the LAMMPS pair style, so a model file exported with fused kernels loads in both.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <tuple>

namespace {

constexpr int64_t kGrain = 256;  // pairs per task of at::parallel_for

void check_pair_arrays(const char *op, std::initializer_list<const at::Tensor *> arrays, int64_t segments) {
  const at::Tensor &first = **arrays.begin();
  TORCH_CHECK(first.dim() == 2, op, ": expected [pairs, features] arrays, got ", first.dim(), " dimensions");
  TORCH_CHECK(segments > 0 && first.size(1) % segments == 0, op, ": ", first.size(1),
              " features do not split into ", segments, " heads");
  for (const at::Tensor *t : arrays) {
    TORCH_CHECK(t->device().is_cpu(), op, ": CPU tensors only (got ", t->device(), "); the model uses ATen ops elsewhere");
    TORCH_CHECK(t->scalar_type() == first.scalar_type(), op, ": mixed dtypes ", t->scalar_type(), " and ",
                first.scalar_type());
    TORCH_CHECK(t->sizes() == first.sizes(), op, ": shape ", t->sizes(), " differs from ", first.sizes());
  }
}

template <typename T>
void logits_kernel(const T *qi, const T *kj, const T *qj, const T *ki, const T *w, T *aij, T *aji, int64_t pairs,
                   int64_t features, int64_t segments, T scale) {
  const int64_t len = features / segments;
  at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t s = 0; s < segments; ++s) {
        const int64_t b = p * features + s * len;
        T a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
        for (int64_t f = 0; f < len; ++f) {
          const T wf = w[b + f];
          a1 += qi[b + f] * wf * kj[b + f];
          a2 += qj[b + f] * wf * ki[b + f];
        }
        aij[p * segments + s] = a1 * scale;
        aji[p * segments + s] = a2 * scale;
      }
    }
  });
}

template <typename T>
void logits_backward_kernel(const T *qi, const T *qj, const T *ki, const T *kj, const T *w, const T *gij,
                            const T *gji, T *gqi, T *gqj, T *gki, T *gkj, T *gw, int64_t pairs, int64_t features,
                            int64_t segments, T scale, bool inputs_grad) {
  const int64_t len = features / segments;
  at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t s = 0; s < segments; ++s) {
        const T t1 = gij[p * segments + s] * scale;
        const T t2 = gji[p * segments + s] * scale;
        const int64_t b = p * features + s * len;
        if (inputs_grad) {
#pragma omp simd
          for (int64_t f = 0; f < len; ++f) {
            const T wf = w[b + f];
            const T tk1 = t1 * kj[b + f], tk2 = t2 * ki[b + f];
            const T tq1 = t1 * qi[b + f], tq2 = t2 * qj[b + f];
            gw[b + f] = tk1 * qi[b + f] + tk2 * qj[b + f];
            gqi[b + f] = tk1 * wf;
            gqj[b + f] = tk2 * wf;
            gkj[b + f] = tq1 * wf;
            gki[b + f] = tq2 * wf;
          }
        } else {
#pragma omp simd
          for (int64_t f = 0; f < len; ++f) gw[b + f] = t1 * kj[b + f] * qi[b + f] + t2 * ki[b + f] * qj[b + f];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> attention_logits(const at::Tensor &q_i, const at::Tensor &k_j,
                                                    const at::Tensor &q_j, const at::Tensor &k_i, const at::Tensor &w,
                                                    int64_t segments, double scale) {
  check_pair_arrays("so3krates::attention_logits", {&q_i, &k_j, &q_j, &k_i, &w}, segments);
  const at::Tensor qi = q_i.contiguous(), kj = k_j.contiguous(), qj = q_j.contiguous(), ki = k_i.contiguous(),
                   wc = w.contiguous();
  const int64_t pairs = qi.size(0), features = qi.size(1);
  at::Tensor aij = at::empty({pairs, segments}, qi.options());
  at::Tensor aji = at::empty({pairs, segments}, qi.options());
  AT_DISPATCH_FLOATING_TYPES(qi.scalar_type(), "so3krates::attention_logits", [&] {
    logits_kernel<scalar_t>(qi.data_ptr<scalar_t>(), kj.data_ptr<scalar_t>(), qj.data_ptr<scalar_t>(),
                            ki.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(), aij.data_ptr<scalar_t>(),
                            aji.data_ptr<scalar_t>(), pairs, features, segments, static_cast<scalar_t>(scale));
  });
  return {aij, aji};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_logits_backward(
    const at::Tensor &q_i, const at::Tensor &q_j, const at::Tensor &k_i, const at::Tensor &k_j, const at::Tensor &w,
    const at::Tensor &ga_ij, const at::Tensor &ga_ji, double scale, bool inputs_grad) {
  const char *op = "so3krates::attention_logits_backward";
  TORCH_CHECK(ga_ij.dim() == 2 && ga_ij.size(0) == q_i.size(0), op, ": logit gradients of shape ", ga_ij.sizes(),
              " for ", q_i.size(0), " pairs");
  check_pair_arrays(op, {&q_i, &q_j, &k_i, &k_j, &w}, ga_ij.size(1));
  check_pair_arrays(op, {&ga_ij, &ga_ji}, 1);
  TORCH_CHECK(ga_ij.scalar_type() == q_i.scalar_type(), op, ": logit gradients in ", ga_ij.scalar_type(),
              ", features in ", q_i.scalar_type());
  const at::Tensor qi = q_i.contiguous(), qj = q_j.contiguous(), ki = k_i.contiguous(), kj = k_j.contiguous(),
                   wc = w.contiguous(), gij = ga_ij.contiguous(), gji = ga_ji.contiguous();
  const int64_t pairs = qi.size(0), features = qi.size(1), segments = gij.size(1);
  at::Tensor gw = at::empty_like(qi);
  at::Tensor none = at::empty({0}, qi.options());
  at::Tensor gqi = inputs_grad ? at::empty_like(qi) : none;
  at::Tensor gqj = inputs_grad ? at::empty_like(qi) : none;
  at::Tensor gki = inputs_grad ? at::empty_like(qi) : none;
  at::Tensor gkj = inputs_grad ? at::empty_like(qi) : none;
  AT_DISPATCH_FLOATING_TYPES(qi.scalar_type(), "so3krates::attention_logits_backward", [&] {
    using T = scalar_t;
    logits_backward_kernel<T>(qi.data_ptr<T>(), qj.data_ptr<T>(), ki.data_ptr<T>(), kj.data_ptr<T>(), wc.data_ptr<T>(),
                              gij.data_ptr<T>(), gji.data_ptr<T>(), inputs_grad ? gqi.data_ptr<T>() : nullptr,
                              inputs_grad ? gqj.data_ptr<T>() : nullptr, inputs_grad ? gki.data_ptr<T>() : nullptr,
                              inputs_grad ? gkj.data_ptr<T>() : nullptr, gw.data_ptr<T>(), pairs, features, segments,
                              static_cast<T>(scale), inputs_grad);
  });
  return {gqi, gqj, gki, gkj, gw};
}

}  // namespace

TORCH_LIBRARY(so3krates, m) {
  m.def("attention_logits(Tensor q_i, Tensor k_j, Tensor q_j, Tensor k_i, Tensor w, int segments, float scale)"
        " -> (Tensor, Tensor)");
  m.def("attention_logits_backward(Tensor q_i, Tensor q_j, Tensor k_i, Tensor k_j, Tensor w, Tensor ga_ij, "
        "Tensor ga_ji, float scale, bool inputs_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
  m.impl("attention_logits", &attention_logits);
  m.impl("attention_logits_backward", &attention_logits_backward);
}
