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

/* Scheme for global terms (num_globals = K > 0), exact under any domain decomposition:
     E_total = sum_r E_r(x_r, G),   G = sum_r g_r(x_r)   (g_r = global_partials on rank r,
     partial sums over r's local atoms; x_r = r's local + ghost positions).
     dE_total/dx_r = dE_r/dx_r |_G  +  (sum_s dE_s/dG) . dg_r/dx_r
   so each rank
     1. evaluates g_r with autograd, allreduces G = sum_r g_r (values only),
     2. evaluates E_r = sum_{i<nlocal} atomic_energies_from_edges(..., G) with G as a leaf,
     3. takes (dE_r/dx_r, dE_r/dG) by autograd and allreduces the adjoint A = sum_s dE_s/dG,
     4. back-propagates A through g_r: dEdx += vjp(g_r, x_r, A).
   Forces on ghost atoms are then reverse-communicated by LAMMPS (newton on) like the local
   part. With K = 0 only step 2-3 (without G) run and no communication happens here. */
double Model::compute(const double *x, int ntot, int nlocal, const std::vector<int64_t> &z,
                      const std::vector<int64_t> &idx_i, const std::vector<int64_t> &idx_j,
                      double total_charge, double num_unpaired_electrons,
                      const AllreduceSum &allreduce, std::vector<double> &atomic_energies,
                      std::vector<double> &dEdx)
{
  const int K = num_globals_;
  atomic_energies.assign(ntot, 0.0);
  dEdx.assign(3 * static_cast<size_t>(ntot), 0.0);
  std::vector<double> gbuf(K, 0.0), adj(K, 0.0);

  if (nlocal == 0) {
    // nothing owned here: E_r = 0, g_r = 0, dE_r/dG = 0; still take part in the reductions
    if (K > 0) {
      allreduce(gbuf.data(), K);
      allreduce(adj.data(), K);
    }
    return 0.0;
  }

  const auto dev = impl_->device;
  const auto dt = impl_->dtype;
  const auto cpu_long = torch::TensorOptions().dtype(torch::kInt64);
  double e_local = 0.0;
  try {
    torch::Tensor pos = torch::from_blob(const_cast<double *>(x), {ntot, 3}, torch::kFloat64)
                            .to(dev, dt, false, true)
                            .requires_grad_(true);
    const auto E = static_cast<int64_t>(idx_i.size());
    torch::Tensor zt =
        torch::from_blob(const_cast<int64_t *>(z.data()), {ntot}, cpu_long).to(dev, torch::kInt64, false, true);
    torch::Tensor ti =
        torch::from_blob(const_cast<int64_t *>(idx_i.data()), {E}, cpu_long).to(dev, torch::kInt64, false, true);
    torch::Tensor tj =
        torch::from_blob(const_cast<int64_t *>(idx_j.data()), {E}, cpu_long).to(dev, torch::kInt64, false, true);

    torch::Tensor g_r, G;
    if (K > 0) {
      g_r = impl_->module
                .get_method("global_partials")({pos, zt, ti, tj, static_cast<int64_t>(nlocal),
                                                 total_charge, num_unpaired_electrons})
                .toTensor();
      if (g_r.numel() != K)
        throw std::runtime_error("global_partials returned " + std::to_string(g_r.numel()) +
                                 " values but metadata num_globals is " + std::to_string(K));
      auto gc = g_r.detach().reshape({K}).to(torch::kCPU, torch::kFloat64).contiguous();
      std::copy(gc.data_ptr<double>(), gc.data_ptr<double>() + K, gbuf.begin());
    }
    if (K > 0) allreduce(gbuf.data(), K);    // step 1
    if (K > 0) {
      G = torch::from_blob(gbuf.data(), {K}, torch::kFloat64)
              .to(dev, dt, false, true)
              .requires_grad_(true);
    } else {
      G = torch::zeros({0}, torch::TensorOptions().dtype(dt).device(dev));
    }

    torch::Tensor ae = impl_->module
                           .get_method("atomic_energies_from_edges")(
                               {pos, zt, ti, tj, static_cast<int64_t>(nlocal), total_charge,
                                num_unpaired_electrons, G})
                           .toTensor();
    if (ae.dim() != 1 || ae.size(0) != ntot)
      throw std::runtime_error("atomic_energies_from_edges returned shape " +
                               c10::str(ae.sizes()) + ", expected [" + std::to_string(ntot) +
                               "]");
    torch::Tensor e_r = ae.narrow(0, 0, nlocal).sum();

    std::vector<torch::Tensor> inputs{pos};
    if (K > 0) inputs.push_back(G);
    std::vector<torch::Tensor> grads(inputs.size());
    if (e_r.requires_grad())
      grads = torch::autograd::grad({e_r}, inputs, {}, false, false, true);

    torch::Tensor dpos = grads[0].defined() ? grads[0] : torch::zeros_like(pos);
    if (K > 0) {
      if (grads[1].defined()) {
        auto ac = grads[1].detach().to(torch::kCPU, torch::kFloat64).contiguous();
        std::copy(ac.data_ptr<double>(), ac.data_ptr<double>() + K, adj.begin());
      }
    }
    if (K > 0) allreduce(adj.data(), K);    // step 3
    if (K > 0 && g_r.requires_grad()) {     // step 4
      torch::Tensor a = torch::from_blob(adj.data(), {K}, torch::kFloat64).to(dev, dt);
      auto vjp = torch::autograd::grad({g_r.reshape({K})}, {pos}, {a}, false, false, true);
      if (vjp[0].defined()) dpos = dpos + vjp[0];
    }

    auto aec = ae.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy(aec.data_ptr<double>(), aec.data_ptr<double>() + ntot, atomic_energies.begin());
    auto dc = dpos.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    std::copy(dc.data_ptr<double>(), dc.data_ptr<double>() + 3 * static_cast<size_t>(ntot),
              dEdx.begin());
    for (int i = 0; i < nlocal; ++i) e_local += atomic_energies[i];
  } catch (const c10::Error &e) {
    throw std::runtime_error("model evaluation failed: " + short_message(e, false));
  }
  return e_local;
}

}    // namespace so3krates
