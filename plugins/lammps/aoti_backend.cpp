/* AOTIBackend: the stages of a .pt2 package (see aoti_backend.h). */
#include "aoti_backend.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>

namespace so3krates {

using torch::Tensor;

namespace {

const int64_t MIN_ROWS = 2;    // export/pt2_programs.py MIN_SIZE

std::vector<int64_t> ints(const std::string &text)
{
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(std::stoll(item));
  return out;
}

bool contains(const std::vector<int64_t> &v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

std::string first_line(const c10::Error &e)
{
  std::string msg = e.what_without_backtrace();
  auto pos = msg.find('\n');
  return pos == std::string::npos ? msg : msg.substr(0, pos);
}

// export/pt2_programs.py program_name
std::string program_name(const std::string &stage, int64_t k, bool vjp, const std::string &boundary)
{
  std::string name = stage;
  if (stage == "project" || stage == "messages" || stage == "efa_sums" || stage == "update")
    name += "_" + std::to_string(k);
  if (!boundary.empty()) name += "_" + boundary;
  return name + (vjp ? "_vjp" : "_fwd");
}

// "num_layers=2;efa0=1;..." -> value of key (-1 when absent)
int64_t layout_value(const std::string &layout, const std::string &key)
{
  std::stringstream ss(layout);
  std::string item;
  while (std::getline(ss, item, ';')) {
    auto eq = item.find('=');
    if (eq != std::string::npos && item.substr(0, eq) == key) return std::stoll(item.substr(eq + 1));
  }
  return -1;
}

}    // namespace

AOTIBackend::AOTIBackend(const std::string &path) : path_(path)
{
  Program &model = program("model");
  (void) model;
  auto it = metadata_.find("species");
  if (it != metadata_.end()) species_ = ints(it->second);
  it = metadata_.find("engine_layout");
  if (it == metadata_.end() || it->second.empty())
    throw std::runtime_error("'" + path + "' is a .pt2 package without the engine stages (exported with "
                             "engine=False); re-export it: so3krates export CHECKPOINT --format pt2 -o model.pt2");
  const int64_t layers = layout_value(it->second, "num_layers");
  for (int64_t k = 0; k < layers; ++k) per_boundary_.push_back(layout_value(it->second, "efa" + std::to_string(k)) > 0);
}

AOTIBackend::~AOTIBackend() = default;

AOTIBackend::Program &AOTIBackend::program(const std::string &name)
{
  auto found = programs_.find(name);
  if (found != programs_.end()) return found->second;
  Program p;
  try {
    p.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path_, name, true);
  } catch (const c10::Error &e) {
    throw std::runtime_error("cannot load program '" + name + "' of the .pt2 package '" + path_ + "' (" +
                             first_line(e) + "); re-export it with this so3krates and torch version");
  }
  auto meta = p.loader->get_metadata();
  if (name == "model") metadata_ = meta;
  if (meta.find("rows_in") == meta.end() || meta.find("num_inputs") == meta.end())
    throw std::runtime_error("'" + path_ + "' program '" + name + "' lacks the so3krates padding metadata: "
                             "not a so3krates .pt2 package; export one with 'so3krates export --format pt2'");
  p.rows_in = ints(meta["rows_in"]);
  p.rows_out = ints(meta["rows_out"]);
  p.num_inputs = static_cast<size_t>(std::stoll(meta["num_inputs"]));
  return programs_.emplace(name, std::move(p)).first->second;
}

// The padding of export/pt2_engine.py run_padded (exact: duplicating a row and halving is exact).
std::vector<Tensor> AOTIBackend::run(const std::string &name, const std::vector<Tensor> &inputs)
{
  Program &p = program(name);
  auto call = [&](const std::vector<Tensor> &args) {
    std::vector<Tensor> c;
    c.reserve(args.size());
    for (const auto &a : args) c.push_back(a.contiguous());
    return p.loader->run(c);
  };
  if (p.rows_in.empty()) return call(inputs);
  const int64_t n = inputs.at(p.rows_in[0]).size(0);
  if (n >= MIN_ROWS) return call(inputs);
  const bool vjp = p.num_inputs < inputs.size();
  std::vector<Tensor> args;
  if (n == 1) {
    for (size_t i = 0; i < inputs.size(); ++i) {
      Tensor t = i >= p.num_inputs ? inputs[i] * 0.5 : inputs[i];
      args.push_back(contains(p.rows_in, static_cast<int64_t>(i)) ? torch::cat({t, t}) : t);
    }
    std::vector<Tensor> out = call(args), res;
    for (size_t i = 0; i < out.size(); ++i) {
      const Tensor &t = out[i];
      if (contains(p.rows_out, static_cast<int64_t>(i)))
        res.push_back(vjp ? t.narrow(0, 0, 1) + t.narrow(0, 1, 1) : t.narrow(0, 0, 1));
      else
        res.push_back(vjp ? t : t * 0.5);
    }
    return res;
  }
  const int64_t dummy_z = species_.empty() ? 1 : species_[0];
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor &t = inputs[i];
    if (!contains(p.rows_in, static_cast<int64_t>(i))) {
      args.push_back(t);
      continue;
    }
    std::vector<int64_t> shape = t.sizes().vec();
    shape[0] = MIN_ROWS;
    args.push_back(t.is_floating_point() ? torch::ones(shape, t.options()) : torch::full(shape, dummy_z, t.options()));
  }
  std::vector<Tensor> out = call(args), res;
  for (size_t i = 0; i < out.size(); ++i)
    res.push_back(contains(p.rows_out, static_cast<int64_t>(i)) ? out[i].narrow(0, 0, 0) : torch::zeros_like(out[i]));
  return res;
}

std::string AOTIBackend::name(const std::string &stage, int64_t k, bool vjp, const std::vector<Tensor> &inputs) const
{
  const bool efa_stage = stage == "efa_sums" || (stage == "update" && k < static_cast<int64_t>(per_boundary_.size()) &&
                                                 per_boundary_[k]);
  if (!efa_stage) return program_name(stage, k, vjp, "");
  const Tensor &pbc = inputs.at(stage == "efa_sums" ? 3 : 4);
  const bool all = pbc.all().item<bool>(), any = pbc.any().item<bool>();
  if (any && !all)
    throw std::runtime_error("Euclidean fast attention supports fully periodic or fully open boxes, not mixed "
                             "boundaries: make the box periodic in all three directions or in none");
  return program_name(stage, k, vjp, all ? "periodic" : "open");
}

void AOTIBackend::check(const std::vector<Tensor> &inputs) const
{
  const Tensor &pos = inputs.at(0), &z = inputs.at(1);
  if (!torch::isfinite(pos).all().item<bool>())
    throw std::runtime_error("positions contain NaN or inf (Å): the simulation has blown up or the input is corrupt; "
                             "check the time step, the starting structure and the units");
  if (species_.empty() || z.numel() == 0) return;
  Tensor known = torch::tensor(species_, torch::kInt64).to(z.device());
  Tensor ok = torch::isin(z, known);
  if (!ok.all().item<bool>()) {
    int64_t i = torch::nonzero(ok.logical_not()).select(1, 0)[0].item<int64_t>();
    std::string list;
    for (int64_t s : species_) list += (list.empty() ? "" : ", ") + std::to_string(s);
    throw std::runtime_error("unknown element (atomic number " + std::to_string(z[i].item<int64_t>()) +
                             ") at atom index " + std::to_string(i) + ": the model only knows atomic numbers " + list +
                             ". Remove those atoms or use a model trained on that element");
  }
}

std::vector<Tensor> AOTIBackend::atoms(const std::string &stage, int64_t k, const std::vector<Tensor> &inputs)
{
  if (stage == "check") {
    check(inputs);
    return {};
  }
  return run(name(stage, k, false, inputs), inputs);
}

std::vector<Tensor> AOTIBackend::atoms_vjp(const std::string &stage, int64_t k, const std::vector<Tensor> &inputs,
                                           const std::vector<Tensor> &grads)
{
  std::vector<Tensor> all(inputs);
  all.insert(all.end(), grads.begin(), grads.end());
  return run(name(stage, k, true, inputs), all);
}

std::vector<Tensor> AOTIBackend::pairs(const std::string &stage, int64_t k, const Tensor &z_i, const Tensor &z_j,
                                       const Tensor &a_i, const Tensor &a_j, const Tensor &vectors)
{
  return run(program_name(stage, k, false, ""), {z_i, z_j, a_i, a_j, vectors});
}

std::vector<Tensor> AOTIBackend::pairs_vjp(const std::string &stage, int64_t k, const Tensor &z_i,
                                           const Tensor &z_j, const Tensor &a_i, const Tensor &a_j,
                                           const Tensor &vectors, const Tensor &g_i, const Tensor &g_j)
{
  return run(program_name(stage, k, true, ""), {z_i, z_j, a_i, a_j, vectors, g_i, g_j});
}

}    // namespace so3krates
