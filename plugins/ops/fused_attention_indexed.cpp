// Fused CPU kernels of the So3krates attention that read the per-atom tables through the pair indices
// (part of libso3krates_ops.so; the gathered-array versions of the logits are in fused_attention.cpp).
//
// Logits: a_ij[s] = scale * sum_{f in head s} q[i, f] w_ij[f] k[j, f] and a_ji[s] = scale * sum q[j, f]
// w_ij[f] k[i, f]. Values: the invariant messages alpha_ij[s] v[j, f] (f in head s) summed onto atom i, and
// alpha_ji[s] v[i, f] onto j. With gathered arrays the model first copies q[i], q[j], k[i], k[j], v[i], v[j]
// into [pairs, features] arrays, forms the messages as two more such arrays and scatters them onto the
// atoms (and in the backward gathers the atoms' gradients and scatters six gradient arrays back); these
// kernels read the rows of the [atoms, features] tables directly and add into [atoms, features]
// accumulators in place. Registered as
//   so3krates::attention_logits_indexed(q, k, idx_i, idx_j, w, int segments, float scale) -> (a_ij, a_ji)
//   so3krates::attention_logits_backward_indexed(q, k, idx_i, idx_j, w, ga_ij, ga_ji, float scale,
//                                                g_q!, g_k!, bool inputs_grad) -> g_w
//   so3krates::attention_values_indexed(alpha_ij, alpha_ji, v, idx_i, idx_j, out!) -> ()
//   so3krates::attention_values_backward_indexed(alpha_ij, alpha_ji, v, idx_i, idx_j, g_out, g_v!,
//                                                bool inputs_grad) -> (g_alpha_ij, g_alpha_ji)
// where the logits' backward adds dL/dq into g_q and dL/dk into g_k when `inputs_grad` and returns dL/dw,
// and the values' backward returns dL/dalpha (per head) and adds dL/dv into g_v when `inputs_grad`.
// CPU tensors (float32 / float64), int64 indices, no autograd formula: called only without a graph
// (potential/nn/attention.py). With several threads each thread adds into its own copy of the
// accumulators, summed at the end (no races; the same result up to the order of additions).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <tuple>
#include <vector>

namespace {

constexpr int64_t kGrain = 256;  // pairs per task of at::parallel_for

void check_indexed(const char *op, const at::Tensor &q, const at::Tensor &k, const at::Tensor &idx_i,
                   const at::Tensor &idx_j, const at::Tensor &w, int64_t segments) {
  TORCH_CHECK(q.dim() == 2 && k.sizes() == q.sizes(), op, ": expected q and k of one shape [atoms, features], got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(1) == q.size(1), op, ": filters of shape ", w.sizes(), " for ", q.size(1),
              " features");
  TORCH_CHECK(segments > 0 && q.size(1) % segments == 0, op, ": ", q.size(1), " features do not split into ",
              segments, " heads");
  TORCH_CHECK(idx_i.dim() == 1 && idx_j.dim() == 1 && idx_i.size(0) == w.size(0) && idx_j.size(0) == w.size(0), op,
              ": pair indices of shapes ", idx_i.sizes(), " and ", idx_j.sizes(), " for ", w.size(0), " pairs");
  TORCH_CHECK(idx_i.scalar_type() == at::kLong && idx_j.scalar_type() == at::kLong, op, ": int64 pair indices expected");
  for (const at::Tensor *t : {&q, &k, &w, &idx_i, &idx_j})
    TORCH_CHECK(t->device().is_cpu(), op, ": CPU tensors only (got ", t->device(), "); the model uses ATen ops elsewhere");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && w.scalar_type() == q.scalar_type(), op, ": mixed dtypes ",
              q.scalar_type(), ", ", k.scalar_type(), ", ", w.scalar_type());
}

// Every index within [0, atoms): one pass over the indices (plain loops, no ATen call, no read-back).
void check_bounds(const char *op, const at::Tensor &ic, const at::Tensor &jc, int64_t atoms) {
  const int64_t *ip = ic.data_ptr<int64_t>(), *jp = jc.data_ptr<int64_t>();
  const int64_t pairs = ic.size(0);
  bool ok = true;
  for (int64_t p = 0; p < pairs; ++p) ok &= (ip[p] >= 0) & (ip[p] < atoms) & (jp[p] >= 0) & (jp[p] < atoms);
  TORCH_CHECK(ok, op, ": pair indices outside [0, ", atoms, ") for ", atoms, " atoms");
}

// Runs body(begin, end, accumulators...) over the pairs, adding into `targets` ([atoms, features] each,
// contiguous): directly with one thread (or few pairs), else into per-thread copies summed at the end.
template <typename T, typename Body>
void scatter_pairs(int64_t pairs, std::initializer_list<at::Tensor *> targets, const Body &body) {
  const int threads = at::get_num_threads();
  const int64_t nt = static_cast<int64_t>(targets.size());
  std::vector<T *> direct;
  for (at::Tensor *t : targets) direct.push_back(t->data_ptr<T>());
  if (threads <= 1 || pairs < 2 * kGrain) {
    body(0, pairs, direct.data());
    return;
  }
  const at::Tensor &first = **targets.begin();
  const int64_t size = first.numel();
  at::Tensor acc = at::zeros({threads, nt, size}, first.options());
  T *accp = acc.data_ptr<T>();
  at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T *> mine;
    for (int64_t t = 0; t < nt; ++t)
      mine.push_back(accp + (static_cast<int64_t>(at::get_thread_num()) * nt + t) * size);
    body(begin, end, mine.data());
  });
  const at::Tensor sums = acc.sum(0);
  int64_t t = 0;
  for (at::Tensor *target : targets) target->view({-1}).add_(sums[t++]);
}

template <typename T>
void logits_indexed_kernel(const T *q, const T *k, const int64_t *ii, const int64_t *jj, const T *w, T *aij, T *aji,
                           int64_t pairs, int64_t features, int64_t segments, T scale) {
  const int64_t len = features / segments;
  at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T *qi = q + ii[p] * features, *qj = q + jj[p] * features;
      const T *ki = k + ii[p] * features, *kj = k + jj[p] * features;
      const T *wp = w + p * features;
      for (int64_t s = 0; s < segments; ++s) {
        const int64_t b = s * len;
        T a1 = 0, a2 = 0;
#pragma omp simd reduction(+ : a1, a2)
        for (int64_t f = b; f < b + len; ++f) {
          a1 += qi[f] * wp[f] * kj[f];
          a2 += qj[f] * wp[f] * ki[f];
        }
        aij[p * segments + s] = a1 * scale;
        aji[p * segments + s] = a2 * scale;
      }
    }
  });
}

// Pairs [begin, end): g_w rows, and with gq / gk (non-null) the row gradients added into them.
template <typename T>
void logits_backward_indexed_range(const T *q, const T *k, const int64_t *ii, const int64_t *jj, const T *w,
                                   const T *gij, const T *gji, T *gw, T *gq, T *gk, int64_t begin, int64_t end,
                                   int64_t features, int64_t segments, T scale) {
  const int64_t len = features / segments;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t i = ii[p] * features, j = jj[p] * features;
    const T *qi = q + i, *qj = q + j, *ki = k + i, *kj = k + j;
    const T *wp = w + p * features;
    T *gwp = gw + p * features;
    for (int64_t s = 0; s < segments; ++s) {
      const T t1 = gij[p * segments + s] * scale;
      const T t2 = gji[p * segments + s] * scale;
      const int64_t b = s * len;
      if (gq != nullptr) {
        T *gqi = gq + i, *gqj = gq + j, *gki = gk + i, *gkj = gk + j;
#pragma omp simd
        for (int64_t f = b; f < b + len; ++f) {
          const T tk1 = t1 * kj[f], tk2 = t2 * ki[f], tq1 = t1 * qi[f], tq2 = t2 * qj[f];
          gwp[f] = tk1 * qi[f] + tk2 * qj[f];
          gqi[f] += tk1 * wp[f];
          gqj[f] += tk2 * wp[f];
          gkj[f] += tq1 * wp[f];
          gki[f] += tq2 * wp[f];
        }
      } else {
#pragma omp simd
        for (int64_t f = b; f < b + len; ++f) gwp[f] = t1 * kj[f] * qi[f] + t2 * ki[f] * qj[f];
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> attention_logits_indexed(const at::Tensor &q, const at::Tensor &k,
                                                            const at::Tensor &idx_i, const at::Tensor &idx_j,
                                                            const at::Tensor &w, int64_t segments, double scale) {
  check_indexed("so3krates::attention_logits_indexed", q, k, idx_i, idx_j, w, segments);
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), ic = idx_i.contiguous(), jc = idx_j.contiguous(),
                   wc = w.contiguous();
  check_bounds("so3krates::attention_logits_indexed", ic, jc, qc.size(0));
  const int64_t pairs = wc.size(0), features = wc.size(1);
  at::Tensor aij = at::empty({pairs, segments}, wc.options());
  at::Tensor aji = at::empty({pairs, segments}, wc.options());
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "so3krates::attention_logits_indexed", [&] {
    using T = scalar_t;
    logits_indexed_kernel<T>(qc.data_ptr<T>(), kc.data_ptr<T>(), ic.data_ptr<int64_t>(), jc.data_ptr<int64_t>(),
                             wc.data_ptr<T>(), aij.data_ptr<T>(), aji.data_ptr<T>(), pairs, features, segments,
                             static_cast<T>(scale));
  });
  return {aij, aji};
}

at::Tensor attention_logits_backward_indexed(const at::Tensor &q, const at::Tensor &k, const at::Tensor &idx_i,
                                             const at::Tensor &idx_j, const at::Tensor &w, const at::Tensor &ga_ij,
                                             const at::Tensor &ga_ji, double scale, at::Tensor &g_q, at::Tensor &g_k,
                                             bool inputs_grad) {
  const char *op = "so3krates::attention_logits_backward_indexed";
  TORCH_CHECK(ga_ij.dim() == 2 && ga_ij.sizes() == ga_ji.sizes() && ga_ij.size(0) == w.size(0), op,
              ": logit gradients of shapes ", ga_ij.sizes(), " and ", ga_ji.sizes(), " for ", w.size(0), " pairs");
  check_indexed(op, q, k, idx_i, idx_j, w, ga_ij.size(1));
  TORCH_CHECK(ga_ij.scalar_type() == q.scalar_type() && ga_ji.scalar_type() == q.scalar_type(), op,
              ": logit gradients in ", ga_ij.scalar_type(), ", features in ", q.scalar_type());
  if (inputs_grad) {
    for (const at::Tensor *g : {&g_q, &g_k}) {
      TORCH_CHECK(g->sizes() == q.sizes() && g->scalar_type() == q.scalar_type() && g->device().is_cpu(), op,
                  ": gradient accumulators must be CPU tensors like q (", q.sizes(), ", ", q.scalar_type(), "), got ",
                  g->sizes(), ", ", g->scalar_type());
      TORCH_CHECK(g->is_contiguous(), op, ": gradient accumulators must be contiguous");
    }
  }
  const at::Tensor qc = q.contiguous(), kc = k.contiguous(), ic = idx_i.contiguous(), jc = idx_j.contiguous(),
                   wc = w.contiguous(), gij = ga_ij.contiguous(), gji = ga_ji.contiguous();
  check_bounds(op, ic, jc, qc.size(0));
  const int64_t pairs = wc.size(0), features = wc.size(1), segments = gij.size(1), atoms = qc.size(0);
  at::Tensor gw = at::empty_like(wc);
  AT_DISPATCH_FLOATING_TYPES(wc.scalar_type(), "so3krates::attention_logits_backward_indexed", [&] {
    using T = scalar_t;
    const T *qp = qc.data_ptr<T>(), *kp = kc.data_ptr<T>(), *wp = wc.data_ptr<T>();
    const T *gijp = gij.data_ptr<T>(), *gjip = gji.data_ptr<T>();
    const int64_t *ip = ic.data_ptr<int64_t>(), *jp = jc.data_ptr<int64_t>();
    T *gwp = gw.data_ptr<T>();
    const T sc = static_cast<T>(scale);
    if (!inputs_grad) {
      at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
        logits_backward_indexed_range<T>(qp, kp, ip, jp, wp, gijp, gjip, gwp, nullptr, nullptr, begin, end, features,
                                         segments, sc);
      });
    } else {
      scatter_pairs<T>(pairs, {&g_q, &g_k}, [&](int64_t begin, int64_t end, T *const *acc) {
        logits_backward_indexed_range<T>(qp, kp, ip, jp, wp, gijp, gjip, gwp, acc[0], acc[1], begin, end, features,
                                         segments, sc);
      });
    }
  });
  return gw;
}

void check_values(const char *op, const at::Tensor &alpha_ij, const at::Tensor &alpha_ji, const at::Tensor &v,
                  const at::Tensor &idx_i, const at::Tensor &idx_j, std::initializer_list<const at::Tensor *> tables) {
  TORCH_CHECK(alpha_ij.dim() == 2 && alpha_ij.sizes() == alpha_ji.sizes(), op, ": attention weights of shapes ",
              alpha_ij.sizes(), " and ", alpha_ji.sizes());
  TORCH_CHECK(v.dim() == 2 && alpha_ij.size(1) > 0 && v.size(1) % alpha_ij.size(1) == 0, op, ": ", v.sizes(),
              " values do not split into ", alpha_ij.size(1), " heads");
  TORCH_CHECK(idx_i.dim() == 1 && idx_j.dim() == 1 && idx_i.size(0) == alpha_ij.size(0) &&
              idx_j.size(0) == alpha_ij.size(0), op, ": pair indices of shapes ", idx_i.sizes(), " and ",
              idx_j.sizes(), " for ", alpha_ij.size(0), " pairs");
  TORCH_CHECK(idx_i.scalar_type() == at::kLong && idx_j.scalar_type() == at::kLong, op, ": int64 pair indices expected");
  for (const at::Tensor *t : {&alpha_ij, &alpha_ji, &v, &idx_i, &idx_j})
    TORCH_CHECK(t->device().is_cpu(), op, ": CPU tensors only (got ", t->device(), "); the model uses ATen ops elsewhere");
  TORCH_CHECK(alpha_ij.scalar_type() == v.scalar_type() && alpha_ji.scalar_type() == v.scalar_type(), op,
              ": mixed dtypes ", alpha_ij.scalar_type(), ", ", v.scalar_type());
  for (const at::Tensor *t : tables)
    TORCH_CHECK(t->sizes() == v.sizes() && t->scalar_type() == v.scalar_type() && t->device().is_cpu() &&
                t->is_contiguous(), op, ": per-atom tables must be contiguous CPU tensors like the values (",
                v.sizes(), ", ", v.scalar_type(), "), got ", t->sizes(), ", ", t->scalar_type());
}

// Pairs [begin, end) of the values' sum: out[i] += alpha_ij[head] v[j], out[j] += alpha_ji[head] v[i].
template <typename T>
void values_range(const T *a1, const T *a2, const T *v, const int64_t *ii, const int64_t *jj, T *out, int64_t begin,
                  int64_t end, int64_t features, int64_t segments) {
  const int64_t len = features / segments;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t i = ii[p] * features, j = jj[p] * features;
    for (int64_t s = 0; s < segments; ++s) {
      const T x1 = a1[p * segments + s], x2 = a2[p * segments + s];
      const int64_t b = s * len;
#pragma omp simd
      for (int64_t f = b; f < b + len; ++f) {
        out[i + f] += x1 * v[j + f];
        out[j + f] += x2 * v[i + f];
      }
    }
  }
}

// Pairs [begin, end) of the values' backward: g_alpha per head, and with gv (non-null) dL/dv added into it.
template <typename T>
void values_backward_range(const T *a1, const T *a2, const T *v, const int64_t *ii, const int64_t *jj, const T *go,
                           T *g1, T *g2, T *gv, int64_t begin, int64_t end, int64_t features, int64_t segments) {
  const int64_t len = features / segments;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t i = ii[p] * features, j = jj[p] * features;
    for (int64_t s = 0; s < segments; ++s) {
      const int64_t b = s * len;
      T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t f = b; f < b + len; ++f) {
        s1 += go[i + f] * v[j + f];
        s2 += go[j + f] * v[i + f];
      }
      g1[p * segments + s] = s1;
      g2[p * segments + s] = s2;
      if (gv != nullptr) {
        const T x1 = a1[p * segments + s], x2 = a2[p * segments + s];
#pragma omp simd
        for (int64_t f = b; f < b + len; ++f) {
          gv[j + f] += x1 * go[i + f];
          gv[i + f] += x2 * go[j + f];
        }
      }
    }
  }
}

void attention_values_indexed(const at::Tensor &alpha_ij, const at::Tensor &alpha_ji, const at::Tensor &v,
                              const at::Tensor &idx_i, const at::Tensor &idx_j, at::Tensor &out) {
  const char *op = "so3krates::attention_values_indexed";
  check_values(op, alpha_ij, alpha_ji, v, idx_i, idx_j, {&out});
  const at::Tensor aij = alpha_ij.contiguous(), aji = alpha_ji.contiguous(), vc = v.contiguous(),
                   ic = idx_i.contiguous(), jc = idx_j.contiguous();
  check_bounds(op, ic, jc, vc.size(0));
  const int64_t pairs = aij.size(0), segments = aij.size(1), features = vc.size(1);
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "so3krates::attention_values_indexed", [&] {
    using T = scalar_t;
    const T *a1 = aij.data_ptr<T>(), *a2 = aji.data_ptr<T>(), *vp = vc.data_ptr<T>();
    const int64_t *ip = ic.data_ptr<int64_t>(), *jp = jc.data_ptr<int64_t>();
    scatter_pairs<T>(pairs, {&out}, [&](int64_t begin, int64_t end, T *const *acc) {
      values_range<T>(a1, a2, vp, ip, jp, acc[0], begin, end, features, segments);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> attention_values_backward_indexed(const at::Tensor &alpha_ij,
                                                                     const at::Tensor &alpha_ji, const at::Tensor &v,
                                                                     const at::Tensor &idx_i, const at::Tensor &idx_j,
                                                                     const at::Tensor &g_out, at::Tensor &g_v,
                                                                     bool inputs_grad) {
  const char *op = "so3krates::attention_values_backward_indexed";
  if (inputs_grad)
    check_values(op, alpha_ij, alpha_ji, v, idx_i, idx_j, {&g_v});
  else
    check_values(op, alpha_ij, alpha_ji, v, idx_i, idx_j, {});
  TORCH_CHECK(g_out.sizes() == v.sizes() && g_out.scalar_type() == v.scalar_type() && g_out.device().is_cpu(), op,
              ": output gradients of shape ", g_out.sizes(), " for values of shape ", v.sizes());
  const at::Tensor aij = alpha_ij.contiguous(), aji = alpha_ji.contiguous(), vc = v.contiguous(),
                   ic = idx_i.contiguous(), jc = idx_j.contiguous(), go = g_out.contiguous();
  check_bounds(op, ic, jc, vc.size(0));
  const int64_t pairs = aij.size(0), segments = aij.size(1), features = vc.size(1);
  at::Tensor ga_ij = at::empty_like(aij), ga_ji = at::empty_like(aji);
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "so3krates::attention_values_backward_indexed", [&] {
    using T = scalar_t;
    const T *a1 = aij.data_ptr<T>(), *a2 = aji.data_ptr<T>(), *vp = vc.data_ptr<T>(), *gp = go.data_ptr<T>();
    const int64_t *ip = ic.data_ptr<int64_t>(), *jp = jc.data_ptr<int64_t>();
    T *g1 = ga_ij.data_ptr<T>(), *g2 = ga_ji.data_ptr<T>();
    if (inputs_grad) {
      scatter_pairs<T>(pairs, {&g_v}, [&](int64_t begin, int64_t end, T *const *acc) {
        values_backward_range<T>(a1, a2, vp, ip, jp, gp, g1, g2, acc[0], begin, end, features, segments);
      });
    } else {
      at::parallel_for(0, pairs, kGrain, [&](int64_t begin, int64_t end) {
        values_backward_range<T>(a1, a2, vp, ip, jp, gp, g1, g2, nullptr, begin, end, features, segments);
      });
    }
  });
  return {ga_ij, ga_ji};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
  m.def("attention_logits_indexed(Tensor q, Tensor k, Tensor idx_i, Tensor idx_j, Tensor w, int segments, "
        "float scale) -> (Tensor, Tensor)");
  m.def("attention_logits_backward_indexed(Tensor q, Tensor k, Tensor idx_i, Tensor idx_j, Tensor w, "
        "Tensor ga_ij, Tensor ga_ji, float scale, Tensor(a!) g_q, Tensor(b!) g_k, bool inputs_grad) -> Tensor");
  m.def("attention_values_indexed(Tensor alpha_ij, Tensor alpha_ji, Tensor v, Tensor idx_i, Tensor idx_j, "
        "Tensor(a!) out) -> ()");
  m.def("attention_values_backward_indexed(Tensor alpha_ij, Tensor alpha_ji, Tensor v, Tensor idx_i, Tensor idx_j, "
        "Tensor g_out, Tensor(a!) g_v, bool inputs_grad) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
  m.impl("attention_logits_indexed", &attention_logits_indexed);
  m.impl("attention_logits_backward_indexed", &attention_logits_backward_indexed);
  m.impl("attention_values_indexed", &attention_values_indexed);
  m.impl("attention_values_backward_indexed", &attention_values_backward_indexed);
}
