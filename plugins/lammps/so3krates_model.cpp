/* libtorch side of pair_style so3krates: loads an exported file and evaluates it on one rank's atoms
   with per-layer halo exchange (see so3krates_model.h for why it is a separate translation unit).

   Data flow of one evaluation (every step an autograd node, stage_autograd.h):
     embed (all atoms; its charge/spin normalisation summed over ranks)
     per layer k:  project (owned atoms + ghosts that appear in a pair) -> messages over the pairs
                   -> reverse halo (ghost rows of the attention sums added to their owners)
                   [-> EFA key-value sums, allreduce] -> update (owned atoms)
                   -> forward halo (owned feature rows copied to the ghost images; not after the last layer)
     readout (owned atoms) [-> charge sums, allreduce -> corrected charges -> forward halo]
     pair terms: ZBL over the local pairs, electrostatics + dispersion over the long-range pairs
     E_rank = readout energies + pair energies; one torch::autograd::grad gives dE/dx and dE/dcell. */
#include "so3krates_model.h"

#include "aoti_backend.h"
#include "stage_autograd.h"
#include "stage_backend.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <dlfcn.h>

#include <cstdlib>

#include <fstream>
#include <stdexcept>
#include <unordered_map>

namespace so3krates {

using torch::Tensor;

namespace {

const char *METADATA_FILE = "so3krates/metadata.json";
const char *ENGINE_METHODS[] = {"engine_layout", "engine_atoms", "engine_atoms_vjp", "engine_pairs",
                                "engine_pairs_vjp"};

// c10::Error messages carry TorchScript stack traces; keep the useful part (the Python exception's
// text when the model raised one, else the first line).
std::string short_message(const c10::Error &e)
{
  std::string msg = e.what_without_backtrace();
  const std::string tag = "builtins.ValueError: ";
  auto pos = msg.rfind(tag);
  if (pos != std::string::npos) msg = msg.substr(pos + tag.size());
  else if ((pos = msg.find('\n')) != std::string::npos) msg = msg.substr(0, pos);
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

Tensor long_tensor(const std::vector<int64_t> &v, const torch::Device &dev)
{
  return torch::tensor(v, torch::kInt64).to(dev);
}

}    // namespace

struct Model::Impl {
  torch::jit::Module module;
  std::unique_ptr<StageBackend> backend;
  torch::Device device{torch::kCPU};
  torch::Dtype dtype{torch::kFloat64};
  int64_t chunk = 0;
};

// The tensors of one evaluation.
struct Inputs {
  Tensor pos;       // [ntot, 3] float64 leaf (requires grad)
  Tensor cell;      // [3, 3] float64 leaf (requires grad)
  Tensor pbc;       // [3] bool
  Tensor z;         // [ntot]
  Tensor rows;      // atoms in the local pair list, owned first [nc]
  Tensor z_rows;    // their atomic numbers
  Tensor pi, pj;    // local pairs, indices into rows
  Tensor vec;       // r_j - r_i of the local pairs [P, 3], model dtype
  Tensor li, lj;    // long-range pairs, indices into all atoms
  Tensor vec_lr;    // [P', 3]
  Tensor charge, spin;
  int64_t nlocal = 0, ntot = 0;
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
    if (why) *why = short_message(e);
    return false;
  }
}

// TorchScript's CPU fuser compiles a kernel for every shape specialisation it sees: for these graphs ~1.5 GB
// of resident memory and seconds of warm-up, for no steady-state gain (the Python loader does the same:
// export/jit_fusion.py). Off for the process unless SO3KRATES_JIT_FUSION=on.
void Model::no_jit_fusion()
{
  const char *v = std::getenv("SO3KRATES_JIT_FUSION");
  const std::string choice = v ? v : "off";
  if (choice == "on") return;
  if (choice != "off")
    throw std::runtime_error("SO3KRATES_JIT_FUSION='" + choice + "': use 'off' (the default: TorchScript kernel "
                             "fusion off) or 'on' (torch's default fusion)");
  torch::jit::FusionStrategy none{{torch::jit::FusionBehavior::STATIC, 0}, {torch::jit::FusionBehavior::DYNAMIC, 0}};
  torch::jit::setFusionStrategy(none);
}

void Model::set_num_threads(int n)
{
  try {
    at::set_num_threads(n);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot set torch threads: " + short_message(e));
  }
}

// The engine layout from a lookup of its entries (TorchScript: engine_layout(); .pt2: the
// "engine_layout" metadata string "num_layers=2;num_features=64;...").
static Layout read_layout(const std::function<int64_t(const std::string &)> &get)
{
  Layout lay;
  lay.num_layers = static_cast<int>(get("num_layers"));
  lay.num_features = static_cast<int>(get("num_features"));
  lay.feature_width = static_cast<int>(get("feature_width"));
  lay.table_width = static_cast<int>(get("table_width"));
  lay.exchange_width = static_cast<int>(get("exchange_width"));
  lay.readout_sums = static_cast<int>(get("readout_sums"));
  lay.embedding_sums = get("embedding_sums") != 0;
  lay.zbl = get("zbl") != 0;
  for (int k = 0; k < lay.num_layers; ++k) lay.efa.push_back(get("efa" + std::to_string(k)) != 0);
  return lay;
}

static Layout read_layout(torch::jit::Module &m)
{
  auto d = m.run_method("engine_layout").toGenericDict();
  return read_layout([&](const std::string &key) -> int64_t {
    auto it = d.find(c10::IValue(key));
    if (it == d.end()) throw std::runtime_error("engine_layout() lacks '" + key + "'");
    return it->value().toInt();
  });
}

static Layout read_layout(const std::string &text)
{
  std::unordered_map<std::string, int64_t> d;
  size_t a = 0;
  while (a < text.size()) {
    size_t b = text.find(';', a);
    if (b == std::string::npos) b = text.size();
    std::string item = text.substr(a, b - a);
    size_t eq = item.find('=');
    if (eq != std::string::npos) d[item.substr(0, eq)] = std::stoll(item.substr(eq + 1));
    a = b + 1;
  }
  return read_layout([&](const std::string &key) -> int64_t {
    auto it = d.find(key);
    if (it == d.end()) throw std::runtime_error("the package's engine_layout lacks '" + key + "'");
    return it->second;
  });
}

static bool ends_with(const std::string &s, const std::string &tail)
{
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// A .pt2 package (torch.export + AOTInductor, compiled for the CPU): the AOTIBackend.
void Model::load_pt2(const std::string &path)
{
  if (impl_->device.type() != torch::kCPU)
    throw std::runtime_error("'" + path + "' is a .pt2 package compiled for the CPU; use 'device cpu', or the "
                             "TorchScript file (so3krates export CHECKPOINT -o model.pt) on the GPU");
  // the compiled programs need libtorch.so (the plugin links libtorch_cpu only): load it from the torch
  // the plugin runs with, so that the programs' dependency resolves to it
  std::string dir = torch_lib_dir();
  std::string lib = dir.empty() ? std::string("libtorch.so") : dir + "/libtorch.so";
  if (!dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL))
    throw std::runtime_error("cannot load " + lib + " for the .pt2 package '" + path + "' (" + dlerror() + ")");
  auto backend = std::make_unique<AOTIBackend>(path);
  const auto &meta = backend->metadata();
  auto it = meta.find("so3krates_metadata");
  if (it == meta.end()) return;    // the pair style reports a package without so3krates metadata
  metadata_ = it->second;
  layout_ = read_layout(meta.at("engine_layout"));
  impl_->backend = std::move(backend);
}

Model::Model(const std::string &path, const std::string &device, int device_index) : impl_(new Impl)
{
  {
    std::ifstream f(path, std::ios::binary);
    if (!f.good()) throw std::runtime_error("cannot open model file '" + path + "'");
  }
  if (device == "cuda") {
    std::string why;
    if (!cuda_available(&why)) throw std::runtime_error("'device cuda' requested but " + why + "; use 'device cpu'");
    try {
      int n = static_cast<int>(torch::cuda::device_count());
      impl_->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(n > 0 ? device_index % n : 0));
    } catch (const c10::Error &e) {
      throw std::runtime_error("cannot select a CUDA device: " + short_message(e));
    }
  } else if (device != "cpu") {
    throw std::runtime_error("unknown device '" + device + "' (use cpu or cuda)");
  }
  if (ends_with(path, ".pt2")) {
    load_pt2(path);
    return;
  }
  no_jit_fusion();
  std::unordered_map<std::string, std::string> extra{{METADATA_FILE, ""}};
  try {
    impl_->module = torch::jit::load(path, impl_->device, extra);
    impl_->module.eval();
  } catch (const c10::Error &e) {
    throw std::runtime_error("'" + path + "' is not a TorchScript model file (torch::jit::load: " + short_message(e) +
                             "); export a so3krates model with 'so3krates export' (a .pt2 package must be named *.pt2)");
  } catch (const std::exception &e) {
    throw std::runtime_error("'" + path + "' cannot be loaded as TorchScript: " + e.what());
  }
  metadata_ = extra[METADATA_FILE];
  if (metadata_.empty()) return;    // the pair style reports a file without so3krates metadata
  for (const char *name : ENGINE_METHODS)
    if (!impl_->module.find_method(name).has_value())
      throw std::runtime_error("'" + path + "' lacks the engine method " + name +
                               ": it was exported by an older so3krates; re-export it with this version "
                               "('so3krates export CHECKPOINT -o model.pt')");
  try {
    layout_ = read_layout(impl_->module);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot read the engine layout of '" + path + "': " + short_message(e));
  }
  impl_->backend = std::make_unique<TorchScriptBackend>(impl_->module);
}

Model::~Model() = default;

void Model::set_dtype(const std::string &dtype)
{
  if (dtype == "float64" || dtype == "torch.float64" || dtype == "double")
    impl_->dtype = torch::kFloat64;
  else if (dtype == "float32" || dtype == "torch.float32" || dtype == "float")
    impl_->dtype = torch::kFloat32;
  else
    throw std::runtime_error("unsupported model dtype '" + dtype + "' (float32 or float64)");
}

void Model::set_chunk(long pairs) { impl_->chunk = pairs; }

std::string Model::device_string() const { return impl_->device.str(); }

// Tensors of one step: positions/cell as differentiable float64 leaves, the local pairs on the
// compact set of atoms they touch (owned atoms first), pair vectors formed in float64.
static Inputs make_inputs(const Step &s, const torch::Device &dev, torch::Dtype dt)
{
  Inputs in;
  in.nlocal = s.nlocal;
  in.ntot = s.ntot;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  Tensor x = s.ntot > 0 ? torch::from_blob(const_cast<double *>(s.x), {s.ntot, 3}, f64).clone()
                        : torch::zeros({0, 3}, f64);
  in.pos = x.to(dev).requires_grad_(true);
  in.cell = torch::from_blob(const_cast<double *>(s.box.cell), {3, 3}, f64).clone().to(dev).requires_grad_(true);
  in.pbc = torch::tensor({s.box.pbc[0], s.box.pbc[1], s.box.pbc[2]}, torch::kBool).to(dev);
  in.z = long_tensor(s.z, dev);
  // compact rows: owned atoms, then the ghosts that appear in a local pair; a ghost that is an image of
  // an owned atom uses its owner's row (the same features: its projection is not computed twice, and
  // its attention sums land on the owner directly instead of through the reverse halo)
  std::vector<int64_t> map(s.ntot, -1), rows;
  for (int64_t i = 0; i < s.nlocal; ++i) {
    map[i] = i;
    rows.push_back(i);
  }
  const bool merge = static_cast<int64_t>(s.owner.size()) == s.ntot;
  std::vector<int64_t> pi(s.pair_i.size()), pj(s.pair_j.size());
  for (size_t p = 0; p < s.pair_i.size(); ++p) {
    for (int64_t a : {s.pair_i[p], s.pair_j[p]})
      if (map[a] < 0) {
        if (merge && s.owner[a] >= 0 && s.owner[a] < s.nlocal) {
          map[a] = s.owner[a];
        } else {
          map[a] = static_cast<int64_t>(rows.size());
          rows.push_back(a);
        }
      }
    pi[p] = map[s.pair_i[p]];
    pj[p] = map[s.pair_j[p]];
  }
  in.rows = long_tensor(rows, dev);
  in.z_rows = in.z.index_select(0, in.rows);
  in.pi = long_tensor(pi, dev);
  in.pj = long_tensor(pj, dev);
  // pair vectors from the atoms' own positions (a merged ghost is at its image position)
  in.vec = (in.pos.index_select(0, long_tensor(s.pair_j, dev)) - in.pos.index_select(0, long_tensor(s.pair_i, dev)))
               .to(dt);
  in.li = long_tensor(s.lr_i, dev);
  in.lj = long_tensor(s.lr_j, dev);
  in.vec_lr = (in.pos.index_select(0, in.lj) - in.pos.index_select(0, in.li)).to(dt);
  in.charge = torch::full({1}, s.total_charge, torch::TensorOptions().dtype(dt).device(dev));
  in.spin = torch::full({1}, s.num_unpaired_electrons, torch::TensorOptions().dtype(dt).device(dev));
  return in;
}

// Initial features of all atoms [ntot, F + m_tot]; no gradient (they depend on the elements only).
static Tensor embed(StageBackend *b, const Layout &lay, const Inputs &in, const Collectives &comm, torch::Dtype dt)
{
  torch::NoGradGuard no_grad;
  Tensor sums = torch::zeros({2}, torch::TensorOptions().dtype(dt).device(in.z.device()));
  if (lay.embedding_sums) {
    Tensor part = b->atoms("embedding_sums", 0, {in.z.narrow(0, 0, in.nlocal), in.charge, in.spin})[0];
    Tensor buf = part.to(torch::kCPU, torch::kFloat64).contiguous();
    comm.allreduce(buf.data_ptr<double>(), static_cast<int>(buf.numel()));
    sums = buf.to(part.options());
  }
  return b->atoms("embed", 0, {in.z, in.charge, in.spin, sums})[0];
}

// The layers: feature rows of the owned atoms after the last layer [nlocal, F + m_tot].
static Tensor layers(StageBackend *b, const Layout &lay, const Inputs &in, Tensor h, CommChain &chain,
                     int64_t chunk, torch::Dtype dt)
{
  const int64_t nl = in.nlocal;
  Tensor pos_own = in.pos.narrow(0, 0, nl).to(dt);
  Tensor cell = in.cell.to(dt);
  for (int k = 0; k < lay.num_layers; ++k) {
    Tensor table = run_stage(b, "project", k, {h.index_select(0, in.rows)})[0];
    Tensor att_rows = run_pairs(b, "messages", k, in.z_rows, in.pi, in.pj, chunk, table, in.vec);
    Tensor att = torch::zeros({in.ntot, att_rows.size(1)}, att_rows.options()).index_copy(0, in.rows, att_rows);
    Tensor att_own = chain.reverse_halo(att);
    Tensor h_own = h.narrow(0, 0, nl);
    Tensor kv = torch::zeros({0}, att_own.options());
    if (lay.efa[k]) kv = chain.allreduce(run_stage(b, "efa_sums", k, {h_own, pos_own, cell, in.pbc})[0]);
    h = run_stage(b, "update", k, {h_own, att_own, pos_own, cell, in.pbc, kv})[0];
    if (k + 1 < lay.num_layers) h = chain.forward_halo(h);
  }
  return h;
}

// Per-atom energies [ntot] (owned rows: readout + pair shares; ghost rows: pair shares).
static Tensor energies(StageBackend *b, const Layout &lay, const Inputs &in, const Tensor &h_own, CommChain &chain,
                       int64_t chunk)
{
  auto rd = run_stage(b, "readout", 0, {h_own, in.z.narrow(0, 0, in.nlocal)});
  Tensor e = torch::zeros({in.ntot}, rd[0].options()).index_copy(0, torch::arange(in.nlocal, in.z.options()), rd[0]);
  if (lay.zbl) {
    Tensor empty = torch::zeros({in.rows.size(0), 0}, in.vec.options());
    Tensor ez = run_pairs(b, "zbl", 0, in.z_rows, in.pi, in.pj, chunk, empty, in.vec).select(1, 0);
    e = e.index_add(0, in.rows, ez);
  }
  if (lay.exchange_width > 0) {
    Tensor sums = chain.allreduce(rd[2]);
    Tensor lr = chain.forward_halo(run_stage(b, "long_range_values", 0, {rd[1], sums, in.charge})[0]);
    e = e + run_pairs(b, "long_range", 0, in.z, in.li, in.lj, chunk, lr, in.vec_lr).select(1, 0);
  }
  return e;
}

void Model::compute(const Step &step, const Collectives &comm, Result &out)
{
  const auto dt = impl_->dtype;
  StageBackend *b = impl_->backend.get();
  const int64_t chunk = impl_->chunk > 0 ? impl_->chunk : std::max<int64_t>(1024, 2097152 / layout_.num_features);
  std::string where = "preparing the inputs";
  try {
    Inputs in = make_inputs(step, impl_->device, dt);
    where = "checking the input";
    b->atoms("check", 0, {in.pos.detach().to(dt), in.z});
    where = "the embedding";
    Tensor h = embed(b, layout_, in, comm, dt);
    CommChain chain(&comm, in.nlocal, in.ntot);
    where = "the layers";
    Tensor h_own = layers(b, layout_, in, h, chain, chunk, dt);
    where = "the readout and pair terms";
    Tensor e = energies(b, layout_, in, h_own, chain, chunk);
    Tensor total = e.sum().to(torch::kFloat64) + chain.anchor().to(e.device());
    where = "the gradient";
    auto g = torch::autograd::grad({total}, {in.pos, in.cell}, {}, false, false, true);
    out.energy = total.item<double>();
    auto ec = e.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    out.atomic_energies.assign(ec.data_ptr<double>(), ec.data_ptr<double>() + in.ntot);
    out.dEdx.assign(3 * static_cast<size_t>(in.ntot), 0.0);
    if (g[0].defined()) {
      auto gc = g[0].to(torch::kCPU, torch::kFloat64).contiguous();
      std::copy(gc.data_ptr<double>(), gc.data_ptr<double>() + 3 * in.ntot, out.dEdx.begin());
    }
    for (int k = 0; k < 9; ++k) out.dEdcell[k] = 0.0;
    if (g[1].defined()) {
      auto cc = g[1].to(torch::kCPU, torch::kFloat64).contiguous();
      for (int k = 0; k < 9; ++k) out.dEdcell[k] = cc.data_ptr<double>()[k];
    }
    out.rows_projected = in.rows.size(0);
  } catch (const c10::Error &e) {
    throw std::runtime_error(where + " failed: " + short_message(e));
  }
}

}    // namespace so3krates
