/* Autograd nodes of the engine: model stages and communication (see stage_autograd.h). */
#include "stage_autograd.h"

#include <torch/csrc/autograd/custom_function.h>

namespace so3krates {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

StageBackend *backend_of(AutogradContext *ctx)
{
  return reinterpret_cast<StageBackend *>(ctx->saved_data["backend"].toInt());
}

struct StageFn : public torch::autograd::Function<StageFn> {
  static variable_list forward(AutogradContext *ctx, StageBackend *backend, const std::string &stage,
                               int64_t k, at::TensorList inputs)
  {
    ctx->saved_data["backend"] = reinterpret_cast<int64_t>(backend);
    ctx->saved_data["stage"] = stage;
    ctx->saved_data["k"] = k;
    ctx->save_for_backward(inputs.vec());
    return backend->atoms(stage, k, inputs.vec());
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    auto inputs = ctx->get_saved_variables();
    auto g = backend_of(ctx)->atoms_vjp(ctx->saved_data["stage"].toStringRef(), ctx->saved_data["k"].toInt(),
                                        inputs, grads);
    variable_list out = {Tensor(), Tensor(), Tensor()};
    for (size_t i = 0; i < inputs.size(); ++i)
      out.push_back(inputs[i].is_floating_point() && i < g.size() ? g[i] : Tensor());
    return out;
  }
};

// Adds a pair stage's column blocks (n for the first atoms i, then n for the second atoms j) into column views
// of acc: no [P, w] row is ever concatenated. No blocks: nothing to add (a table that needs no gradient).
void add_blocks(Tensor &acc, const Tensor &i, const Tensor &j, const std::vector<Tensor> &blocks, size_t first)
{
  const size_t n = (blocks.size() - first) / 2;
  int64_t off = 0;
  for (size_t c = 0; c < n; ++c) {
    const Tensor &b_i = blocks[first + c], &b_j = blocks[first + n + c];
    Tensor view = acc.narrow(1, off, b_i.size(1));
    view.index_add_(0, i, b_i);
    view.index_add_(0, j, b_j);
    off += b_i.size(1);
  }
  if (n > 0 && off != acc.size(1))
    throw std::runtime_error("a pair stage returned blocks " + std::to_string(off) + " columns wide for a table of " +
                             std::to_string(acc.size(1)) + ": the model file and this plugin disagree on the stage "
                             "protocol; re-export the model with this so3krates version");
}

struct PairsFn : public torch::autograd::Function<PairsFn> {
  static Tensor forward(AutogradContext *ctx, StageBackend *backend, const std::string &stage, int64_t k,
                        int64_t chunk, Tensor z, Tensor ii, Tensor jj, Tensor table, Tensor vectors)
  {
    ctx->saved_data["backend"] = reinterpret_cast<int64_t>(backend);
    ctx->saved_data["stage"] = stage;
    ctx->saved_data["k"] = k;
    ctx->saved_data["chunk"] = chunk;
    ctx->save_for_backward({z, ii, jj, table, vectors});
    const int64_t np = ii.size(0);
    Tensor acc;
    for (int64_t a = 0; a == 0 || a < np; a += chunk) {
      const int64_t len = std::min(chunk, np - a);
      Tensor i = ii.narrow(0, a, len), j = jj.narrow(0, a, len);
      auto out = backend->pairs(stage, k, z.index_select(0, i), z.index_select(0, j), table.index_select(0, i),
                                table.index_select(0, j), vectors.narrow(0, a, len));
      if (!acc.defined()) {
        int64_t width = 0;
        for (size_t c = 0; c < out.size() / 2; ++c) width += out[c].size(1);
        acc = torch::zeros({table.size(0), width}, vectors.options());
      }
      add_blocks(acc, i, j, out, 0);
    }
    return acc;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    auto s = ctx->get_saved_variables();
    const Tensor &z = s[0], &ii = s[1], &jj = s[2], &table = s[3], &vectors = s[4];
    const int64_t chunk = ctx->saved_data["chunk"].toInt();
    const std::string stage = ctx->saved_data["stage"].toStringRef();
    const int64_t k = ctx->saved_data["k"].toInt();
    Tensor g = grads[0];
    Tensor g_table = torch::zeros_like(table), g_vec = torch::zeros_like(vectors);
    for (int64_t a = 0; a < ii.size(0); a += chunk) {
      const int64_t len = std::min(chunk, ii.size(0) - a);
      Tensor i = ii.narrow(0, a, len), j = jj.narrow(0, a, len);
      auto r = backend_of(ctx)->pairs_vjp(stage, k, z.index_select(0, i), z.index_select(0, j),
                                          table.index_select(0, i), table.index_select(0, j),
                                          vectors.narrow(0, a, len), g.index_select(0, i), g.index_select(0, j));
      g_vec.narrow(0, a, len).copy_(r.at(0));
      add_blocks(g_table, i, j, r, 1);
    }
    return {Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), g_table, g_vec};
  }
};

enum CommKind { FORWARD_HALO = 0, REVERSE_HALO = 1, ALLREDUCE = 2 };

// x: CPU float64, contiguous. Returns the communicated copy.
Tensor communicate(const Collectives *comm, int kind, const Tensor &x, int64_t nlocal, int64_t ntot)
{
  if (kind == ALLREDUCE) {
    Tensor buf = x.clone();
    comm->allreduce(buf.data_ptr<double>(), static_cast<int>(buf.numel()));
    return buf;
  }
  const int64_t w = x.size(1);
  Tensor buf = torch::zeros({ntot, w}, x.options());
  if (kind == FORWARD_HALO) {
    buf.narrow(0, 0, nlocal).copy_(x);
    comm->forward(buf.data_ptr<double>(), static_cast<int>(w));
    return buf;
  }
  buf.copy_(x);
  comm->reverse(buf.data_ptr<double>(), static_cast<int>(w));
  return buf.narrow(0, 0, nlocal).clone();
}

// the adjoint of each kind of communication
int adjoint(int kind)
{
  return kind == FORWARD_HALO ? REVERSE_HALO : (kind == REVERSE_HALO ? FORWARD_HALO : ALLREDUCE);
}

struct CommFn : public torch::autograd::Function<CommFn> {
  static variable_list forward(AutogradContext *ctx, const Collectives *comm, int64_t kind, int64_t nlocal,
                               int64_t ntot, Tensor x, Tensor token)
  {
    ctx->saved_data["comm"] = reinterpret_cast<int64_t>(comm);
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["nlocal"] = nlocal;
    ctx->saved_data["ntot"] = ntot;
    return {communicate(comm, static_cast<int>(kind), x.contiguous(), nlocal, ntot), token.clone()};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    auto comm = reinterpret_cast<const Collectives *>(ctx->saved_data["comm"].toInt());
    const int kind = adjoint(static_cast<int>(ctx->saved_data["kind"].toInt()));
    Tensor g = communicate(comm, kind, grads[0].contiguous(), ctx->saved_data["nlocal"].toInt(),
                           ctx->saved_data["ntot"].toInt());
    return {Tensor(), Tensor(), Tensor(), Tensor(), g, grads[1]};
  }
};

}    // namespace

std::vector<Tensor> run_stage(StageBackend *backend, const std::string &stage, int64_t k,
                              const std::vector<Tensor> &inputs)
{
  return StageFn::apply(backend, stage, k, at::TensorList(inputs));
}

Tensor run_pairs(StageBackend *backend, const std::string &stage, int64_t k, const Tensor &z, const Tensor &ii,
                 const Tensor &jj, int64_t chunk, const Tensor &table, const Tensor &vectors)
{
  return PairsFn::apply(backend, stage, k, chunk, z, ii, jj, table, vectors);
}

CommChain::CommChain(const Collectives *comm, int64_t nlocal, int64_t ntot) :
    comm_(comm), nlocal_(nlocal), ntot_(ntot),
    token_(torch::zeros({}, torch::kFloat64).requires_grad_(true))
{
}

Tensor CommChain::run(int kind, const Tensor &x)
{
  const auto opts = x.options();
  auto out = CommFn::apply(comm_, static_cast<int64_t>(kind), nlocal_, ntot_, x.to(torch::kCPU, torch::kFloat64),
                           token_);
  token_ = out[1];
  return out[0].to(opts);
}

Tensor CommChain::forward_halo(const Tensor &owned) { return run(FORWARD_HALO, owned); }
Tensor CommChain::reverse_halo(const Tensor &rows) { return run(REVERSE_HALO, rows); }
Tensor CommChain::allreduce(const Tensor &partial) { return run(ALLREDUCE, partial); }

}    // namespace so3krates
