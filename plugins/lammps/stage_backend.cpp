/* TorchScriptBackend: the stages of an exported TorchScript file (see stage_backend.h). */
#include "stage_backend.h"

namespace so3krates {

namespace {

std::vector<torch::Tensor> to_tensors(const c10::IValue &v)
{
  std::vector<torch::Tensor> out;
  for (const auto &t : v.toListRef()) out.push_back(t.toTensor());
  return out;
}

c10::List<torch::Tensor> to_list(const std::vector<torch::Tensor> &v)
{
  c10::List<torch::Tensor> out;
  for (const auto &t : v) out.push_back(t);
  return out;
}

}    // namespace

std::vector<torch::Tensor> TorchScriptBackend::atoms(const std::string &stage, int64_t k,
                                                     const std::vector<torch::Tensor> &inputs)
{
  return to_tensors(module_.get_method("engine_atoms")({stage, k, to_list(inputs)}));
}

std::vector<torch::Tensor> TorchScriptBackend::atoms_vjp(const std::string &stage, int64_t k,
                                                         const std::vector<torch::Tensor> &inputs,
                                                         const std::vector<torch::Tensor> &grads)
{
  return to_tensors(
      module_.get_method("engine_atoms_vjp")({stage, k, to_list(inputs), to_list(grads)}));
}

std::vector<torch::Tensor> TorchScriptBackend::pairs(const std::string &stage, int64_t k, const torch::Tensor &z_i,
                                                     const torch::Tensor &z_j, const torch::Tensor &a_i,
                                                     const torch::Tensor &a_j, const torch::Tensor &vectors)
{
  return to_tensors(module_.get_method("engine_pairs")({stage, k, z_i, z_j, a_i, a_j, vectors}));
}

std::vector<torch::Tensor> TorchScriptBackend::pairs_vjp(const std::string &stage, int64_t k,
                                                         const torch::Tensor &z_i, const torch::Tensor &z_j,
                                                         const torch::Tensor &a_i, const torch::Tensor &a_j,
                                                         const torch::Tensor &vectors, const torch::Tensor &g_i,
                                                         const torch::Tensor &g_j)
{
  return to_tensors(
      module_.get_method("engine_pairs_vjp")({stage, k, z_i, z_j, a_i, a_j, vectors, g_i, g_j}));
}

}    // namespace so3krates
