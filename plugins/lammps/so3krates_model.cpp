/* libtorch side of pair_style so3krates (see so3krates_model.h for why it is separate). */
#include "so3krates_model.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <dlfcn.h>

#include <fstream>
#include <stdexcept>
#include <unordered_map>

namespace so3krates {

namespace {

const char *METADATA_FILE = "so3krates/metadata.json";

// c10::Error messages carry TorchScript stack traces; keep the useful part.
std::string short_message(const c10::Error &e, bool first_line_only)
{
  std::string msg = e.what_without_backtrace();
  if (first_line_only) {
    auto pos = msg.find('\n');
    if (pos != std::string::npos) msg = msg.substr(0, pos);
  }
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return msg;
}

std::string torch_lib_dir()
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&at::set_num_threads), &info) && info.dli_fname) {
    std::string p = info.dli_fname;
    auto pos = p.rfind('/');
    if (pos != std::string::npos) return p.substr(0, pos);
  }
  return "";
}

}    // namespace

struct Model::Impl {
  torch::jit::Module module;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype{torch::kFloat64};
};

bool Model::cuda_available(std::string *why)
{
  try {
    if (torch::cuda::is_available()) return true;
    // the plugin links libtorch_cpu only; the CUDA backend registers itself when
    // libtorch_cuda.so is loaded, so load it from the torch the plugin runs with.
    std::string dir = torch_lib_dir();
    std::string lib = dir.empty() ? std::string("libtorch_cuda.so") : dir + "/libtorch_cuda.so";
    void *h = dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
      if (why) *why = std::string("this torch has no usable CUDA library (") + dlerror() + ")";
      return false;
    }
    if (torch::cuda::is_available()) return true;
    if (why) *why = "torch finds no CUDA GPU on this machine (torch::cuda::is_available() is false)";
    return false;
  } catch (const c10::Error &e) {
    if (why) *why = short_message(e, true);
    return false;
  }
}

void Model::set_num_threads(int n)
{
  try {
    at::set_num_threads(n);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot set torch threads: " + short_message(e, true));
  }
}

Model::Model(const std::string &path, const std::string &device, int device_index) :
    impl_(new Impl)
{
  {
    std::ifstream f(path, std::ios::binary);
    if (!f.good()) throw std::runtime_error("cannot open model file '" + path + "'");
  }
  if (device == "cuda") {
    std::string why;
    if (!cuda_available(&why))
      throw std::runtime_error("'device cuda' requested but " + why + "; use 'device cpu'");
    try {
      int n = static_cast<int>(torch::cuda::device_count());
      impl_->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(n > 0 ? device_index % n : 0));
    } catch (const c10::Error &e) {
      throw std::runtime_error("cannot select a CUDA device: " + short_message(e, true));
    }
  } else if (device != "cpu") {
    throw std::runtime_error("unknown device '" + device + "' (use cpu or cuda)");
  }

  std::unordered_map<std::string, std::string> extra{{METADATA_FILE, ""}};
  try {
    impl_->module = torch::jit::load(path, impl_->device, extra);
    impl_->module.eval();
  } catch (const c10::Error &e) {
    throw std::runtime_error("'" + path +
                             "' is not a TorchScript model file (torch::jit::load: " +
                             short_message(e, true) +
                             "); export a so3krates model with 'so3krates export'");
  } catch (const std::exception &e) {
    throw std::runtime_error("'" + path + "' cannot be loaded as TorchScript: " + e.what());
  }
  metadata_ = extra[METADATA_FILE];
}

Model::~Model() = default;

bool Model::has_method(const std::string &name) const
{
  try {
    return impl_->module.find_method(name).has_value();
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot inspect the model: " + short_message(e, true));
  }
}

void Model::set_dtype(const std::string &dtype)
{
  if (dtype == "float64" || dtype == "torch.float64" || dtype == "double")
    impl_->dtype = torch::kFloat64;
  else if (dtype == "float32" || dtype == "torch.float32" || dtype == "float")
    impl_->dtype = torch::kFloat32;
  else
    throw std::runtime_error("unsupported model dtype '" + dtype + "' (float32 or float64)");
}

std::string Model::device_string() const
{
  return impl_->device.str();
}

void Model::set_interface(int legacy_num_globals)
{
  try {
    auto &m = impl_->module;
    staged_ = m.find_method("engine_begin").has_value() && m.find_method("engine_continue").has_value() &&
              m.find_method("engine_num_stages").has_value() && m.find_method("engine_stage_kinds").has_value() &&
              m.find_method("engine_exchange_width").has_value() && m.find_method("engine_ghost_shell").has_value();
    stage_names_.clear();
    stage_exchange_.clear();
    exchange_width_ = 0;
    ghost_shell_ = -1.0;
    if (staged_) {
      num_stages_ = static_cast<int>(m.run_method("engine_num_stages").toInt());
      for (const auto &v : m.run_method("engine_stage_kinds").toListRef())
        stage_exchange_.push_back(v.toStringRef() == "exchange");
      if (m.find_method("engine_stage_names").has_value())
        for (const auto &v : m.run_method("engine_stage_names").toListRef()) stage_names_.push_back(v.toStringRef());
      exchange_width_ = static_cast<int>(m.run_method("engine_exchange_width").toInt());
      ghost_shell_ = m.run_method("engine_ghost_shell").toDouble();
      if (static_cast<int>(stage_exchange_.size()) != num_stages_)
        throw std::runtime_error("the model lists " + std::to_string(stage_exchange_.size()) +
                                 " stage kinds for " + std::to_string(num_stages_) + " stages");
    } else {
      num_stages_ = legacy_num_globals > 0 ? 1 : 0;
      if (num_stages_) stage_names_.push_back("global_partials");
      stage_exchange_.assign(num_stages_, false);
    }
    while (static_cast<int>(stage_names_.size()) < num_stages_)
      stage_names_.push_back("stage" + std::to_string(stage_names_.size()));
    stage_sizes_.assign(num_stages_, 0);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot inspect the model: " + short_message(e, true));
  }
}

void Model::set_prune(bool on)
{
  if (!staged_) return;
  try {
    if (impl_->module.hasattr("prune")) impl_->module.setattr("prune", on);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot set pruning: " + short_message(e, true));
  }
}

namespace {

// values of a (small) tensor as doubles on the CPU
void to_doubles(const torch::Tensor &t, std::vector<double> &buf)
{
  auto c = t.detach().reshape({-1}).to(torch::kCPU, torch::kFloat64).contiguous();
  buf.assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}    // namespace

/* Scheme for global terms (stages s = 0..S-1), exact under any domain decomposition:
     E_total = sum_r E_r(x_r, G_0..G_{S-1}),   G_s = sum_r g_{s,r}(x_r, G_0..G_{s-1})
   (g_{s,r}: stage s partial sums over rank r's owned atoms; x_r: r's local + ghost positions
   and the cell). Forward: each rank evaluates g_0, allreduces it into G_0 (a new autograd
   leaf), continues to g_1 with G_0, ... and finally E_r with all G_s, keeping one autograd
   graph. Backward, in reverse stage order: Lambda = E_r; for s = S-1..0 the adjoint
   A_s = sum_r dLambda_r/dG_s (the derivative through G_s's direct uses, including those in
   later stages' partial sums) is allreduced and Lambda += A_s . g_s; finally
   dE_total/dx_r = dLambda/dx_r. Every rank makes the same 2S allreduce calls in the same order
   (plus S size checks), also a rank that owns no atom.
   Exchange stages (per-atom values, e.g. partial charges and Hirshfeld ratios) work the same way
   with the rank sum replaced by communication between owners and ghost images: forward, every
   ghost row of G_s is its owner's row of g_s (LAMMPS forward communication); backward, the ghost
   rows of A_s are added to their owners' rows (reverse communication) and the owned rows are
   used. Legacy files (no staged methods): one stage, g = global_partials,
   E = atomic_energies_from_edges(G), evaluated independently (recomputing the representation). */
double Model::compute(const double *x, int ntot, int nlocal, const std::vector<int64_t> &z,
                      const std::vector<int64_t> &idx_i, const std::vector<int64_t> &idx_j,
                      double total_charge, double num_unpaired_electrons, const Box &box,
                      const Collectives &comm, std::vector<double> &atomic_energies,
                      std::vector<double> &dEdx, double *dEdcell)
{
  const AllreduceSum &allreduce = comm.allreduce;
  const AllreduceMax &allreduce_max = comm.allreduce_max;
  const int W = exchange_width_;
  const int S = num_stages_;
  atomic_energies.assign(ntot, 0.0);
  dEdx.assign(3 * static_cast<size_t>(ntot), 0.0);
  for (int k = 0; k < 9; ++k) dEdcell[k] = 0.0;
  std::vector<double> buf;

  if (nlocal == 0) {
    // nothing owned here: E_r = 0 and g_r = 0, but the reductions and exchanges are collective
    for (int s = 0; s < S; ++s) {
      if (stage_exchange_[s]) {
        buf.assign(static_cast<size_t>(ntot) * W, 0.0);
        comm.forward(buf.data(), W);
        continue;
      }
      stage_sizes_[s] = allreduce_max(0);
      buf.assign(stage_sizes_[s], 0.0);
      allreduce(buf.data(), static_cast<int>(buf.size()));
    }
    for (int s = S - 1; s >= 0; --s) {
      if (stage_exchange_[s]) {
        buf.assign(static_cast<size_t>(ntot) * W, 0.0);
        comm.reverse(buf.data(), W);
        continue;
      }
      buf.assign(stage_sizes_[s], 0.0);
      allreduce(buf.data(), static_cast<int>(buf.size()));
    }
    return 0.0;
  }

  const auto dev = impl_->device;
  const auto dt = impl_->dtype;
  const auto cpu_long = torch::TensorOptions().dtype(torch::kInt64);
  double e_local = 0.0;
  std::string where = "model evaluation";
  try {
    torch::Tensor pos = torch::from_blob(const_cast<double *>(x), {ntot, 3}, torch::kFloat64)
                            .to(dev, dt, false, true)
                            .requires_grad_(true);
    torch::Tensor cell = torch::from_blob(const_cast<double *>(box.cell), {3, 3}, torch::kFloat64)
                             .to(dev, dt, false, true)
                             .requires_grad_(true);
    torch::Tensor pbc = torch::tensor({box.pbc[0], box.pbc[1], box.pbc[2]}, torch::kBool).to(dev);
    const auto E = static_cast<int64_t>(idx_i.size());
    torch::Tensor zt =
        torch::from_blob(const_cast<int64_t *>(z.data()), {ntot}, cpu_long).to(dev, torch::kInt64, false, true);
    torch::Tensor ti =
        torch::from_blob(const_cast<int64_t *>(idx_i.data()), {E}, cpu_long).to(dev, torch::kInt64, false, true);
    torch::Tensor tj =
        torch::from_blob(const_cast<int64_t *>(idx_j.data()), {E}, cpu_long).to(dev, torch::kInt64, false, true);
    const int64_t nl = nlocal;

    std::vector<torch::Tensor> g(S), G(S);
    torch::Tensor out;
    c10::IValue state;
    auto reduce_stage = [&](int s, const torch::Tensor &partial) {
      if (stage_exchange_[s]) {    // owned rows -> ghost rows
        if (partial.dim() != 2 || partial.size(0) != nlocal || partial.size(1) != W)
          throw std::runtime_error("the exchange stage returned shape " + c10::str(partial.sizes()) +
                                   ", expected [" + std::to_string(nlocal) + ", " + std::to_string(W) + "]");
        g[s] = partial;
        buf.assign(static_cast<size_t>(ntot) * W, 0.0);
        auto pc = partial.detach().to(torch::kCPU, torch::kFloat64).contiguous();
        std::copy(pc.data_ptr<double>(), pc.data_ptr<double>() + static_cast<size_t>(nlocal) * W, buf.begin());
        comm.forward(buf.data(), W);
        G[s] = torch::from_blob(buf.data(), {static_cast<int64_t>(ntot), static_cast<int64_t>(W)}, torch::kFloat64)
                   .to(dev, dt, false, true)
                   .requires_grad_(true);
        return;
      }
      g[s] = partial.reshape({-1});
      const long n = static_cast<long>(g[s].numel());
      stage_sizes_[s] = allreduce_max(n);
      if (stage_sizes_[s] != n)
        throw std::runtime_error("the global sums of stage '" + stage_names_[s] + "' have " +
                                 std::to_string(n) + " values on this rank but " +
                                 std::to_string(stage_sizes_[s]) +
                                 " on another (ranks see different boxes?)");
      to_doubles(g[s], buf);
      allreduce(buf.data(), static_cast<int>(buf.size()));
      G[s] = torch::from_blob(buf.data(), {n}, torch::kFloat64).to(dev, dt, false, true).requires_grad_(true);
    };
    if (staged_) {
      where = "engine_begin";
      auto r = impl_->module.get_method("engine_begin")(
          {pos, zt, ti, tj, nl, total_charge, num_unpaired_electrons, cell, pbc});
      auto tup = r.toTuple();
      state = tup->elements()[0];
      out = tup->elements()[1].toTensor();
      layer_counts_.clear();
      if (state.isGenericDict()) {
        auto dict = state.toGenericDict();
        auto it = dict.find(c10::IValue(std::string("cnt")));
        if (it != dict.end() && it->value().isTensor()) {
          auto c = it->value().toTensor().to(torch::kCPU, torch::kInt64).contiguous();
          layer_counts_.assign(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
        }
      }
      for (int s = 0; s < S; ++s) {
        reduce_stage(s, out);
        where = "engine_continue (after stage '" + stage_names_[s] + "')";
        auto r2 = impl_->module.get_method("engine_continue")({state, static_cast<int64_t>(s + 1), G[s]});
        auto tup2 = r2.toTuple();
        state = tup2->elements()[0];
        out = tup2->elements()[1].toTensor();
      }
    } else {
      if (S > 0) {
        where = "global_partials";
        torch::Tensor partial = impl_->module
                                    .get_method("global_partials")({pos, zt, ti, tj, nl, total_charge,
                                                                    num_unpaired_electrons})
                                    .toTensor();
        reduce_stage(0, partial);
      }
      torch::Tensor Gin = S > 0 ? G[0] : torch::zeros({0}, torch::TensorOptions().dtype(dt).device(dev));
      where = "atomic_energies_from_edges";
      out = impl_->module
                .get_method("atomic_energies_from_edges")(
                    {pos, zt, ti, tj, nl, total_charge, num_unpaired_electrons, Gin})
                .toTensor();
    }
    where = "the gradient";
    if (out.dim() != 1 || out.size(0) != ntot)
      throw std::runtime_error("the model returned per-atom energies of shape " + c10::str(out.sizes()) +
                               ", expected [" + std::to_string(ntot) + "]");
    torch::Tensor lambda = out.narrow(0, 0, nlocal).sum();

    // backward, stage by stage in reverse order (see above)
    for (int s = S - 1; s >= 0; --s) {
      const bool xchg = stage_exchange_[s];
      buf.assign(xchg ? static_cast<size_t>(ntot) * W : static_cast<size_t>(stage_sizes_[s]), 0.0);
      if (lambda.requires_grad()) {
        auto a = torch::autograd::grad({lambda}, {G[s]}, {}, true, false, true);
        if (a[0].defined()) to_doubles(a[0], buf);
      }
      torch::Tensor A;
      if (xchg) {    // ghost rows -> owners; the owned rows hold the complete adjoint
        comm.reverse(buf.data(), W);
        A = torch::from_blob(buf.data(), {static_cast<int64_t>(nlocal), static_cast<int64_t>(W)}, torch::kFloat64)
                .to(dev, dt, false, true);
      } else {
        allreduce(buf.data(), static_cast<int>(buf.size()));
        A = torch::from_blob(buf.data(), {static_cast<int64_t>(buf.size())}, torch::kFloat64).to(dev, dt, false, true);
      }
      if (g[s].requires_grad()) lambda = lambda + (g[s] * A).sum();
    }
    torch::Tensor dpos, dcell;
    if (lambda.requires_grad()) {
      auto grads = torch::autograd::grad({lambda}, {pos, cell}, {}, false, false, true);
      dpos = grads[0];
      dcell = grads[1];
    }

    auto aec = out.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy(aec.data_ptr<double>(), aec.data_ptr<double>() + ntot, atomic_energies.begin());
    if (dpos.defined()) {
      auto dc = dpos.detach().to(torch::kCPU, torch::kFloat64).contiguous();
      std::copy(dc.data_ptr<double>(), dc.data_ptr<double>() + 3 * static_cast<size_t>(ntot), dEdx.begin());
    }
    if (dcell.defined()) {
      auto cc = dcell.detach().to(torch::kCPU, torch::kFloat64).contiguous();
      for (int k = 0; k < 9; ++k) dEdcell[k] = cc.data_ptr<double>()[k];
    }
    for (int i = 0; i < nlocal; ++i) e_local += atomic_energies[i];
  } catch (const c10::Error &e) {
    throw std::runtime_error(where + " failed: " + short_message(e, false));
  }
  return e_local;
}

}    // namespace so3krates
