/* The exported model's stages as seen from C++ (torch side; see export/exported_model.py).

   A backend runs one stage of the model: per-atom stages ("embed", "project", "update", ...) and
   pair stages ("messages", "zbl", "long_range") on a chunk of pairs, each with its explicit
   backward (vector-Jacobian product). TorchScriptBackend calls the exported TorchScript file's
   engine_atoms / engine_atoms_vjp / engine_pairs / engine_pairs_vjp methods. */
#ifndef SO3KRATES_STAGE_BACKEND_H
#define SO3KRATES_STAGE_BACKEND_H

#include <torch/script.h>

#include <string>
#include <vector>

namespace so3krates {

class StageBackend {
 public:
  virtual ~StageBackend() = default;
  virtual std::vector<torch::Tensor> atoms(const std::string &stage, int64_t k,
                                           const std::vector<torch::Tensor> &inputs) = 0;
  // gradients w.r.t. the inputs (one per input) from those of the outputs
  virtual std::vector<torch::Tensor> atoms_vjp(const std::string &stage, int64_t k,
                                               const std::vector<torch::Tensor> &inputs,
                                               const std::vector<torch::Tensor> &grads) = 0;
  // what each pair adds to the rows of its first atom as n column blocks [P, w_c] in column order, then
  // the same n blocks for its second atom (export/exported_model.py, format 3)
  virtual std::vector<torch::Tensor> pairs(const std::string &stage, int64_t k, const torch::Tensor &z_i,
                              const torch::Tensor &z_j, const torch::Tensor &a_i,
                              const torch::Tensor &a_j, const torch::Tensor &vectors) = 0;
  // g_i / g_j: gradient rows of the two atoms -> [g_vectors, blocks of g_a_i, blocks of g_a_j] (no blocks:
  // the table needs no gradient)
  virtual std::vector<torch::Tensor> pairs_vjp(const std::string &stage, int64_t k,
                                               const torch::Tensor &z_i, const torch::Tensor &z_j,
                                               const torch::Tensor &a_i, const torch::Tensor &a_j,
                                               const torch::Tensor &vectors, const torch::Tensor &g_i,
                                               const torch::Tensor &g_j) = 0;
};

class TorchScriptBackend : public StageBackend {
 public:
  explicit TorchScriptBackend(torch::jit::Module module) : module_(std::move(module)) {}
  std::vector<torch::Tensor> atoms(const std::string &stage, int64_t k,
                                   const std::vector<torch::Tensor> &inputs) override;
  std::vector<torch::Tensor> atoms_vjp(const std::string &stage, int64_t k,
                                       const std::vector<torch::Tensor> &inputs,
                                       const std::vector<torch::Tensor> &grads) override;
  std::vector<torch::Tensor> pairs(const std::string &stage, int64_t k, const torch::Tensor &z_i,
                                   const torch::Tensor &z_j, const torch::Tensor &a_i, const torch::Tensor &a_j,
                                   const torch::Tensor &vectors) override;
  std::vector<torch::Tensor> pairs_vjp(const std::string &stage, int64_t k, const torch::Tensor &z_i,
                                       const torch::Tensor &z_j, const torch::Tensor &a_i,
                                       const torch::Tensor &a_j, const torch::Tensor &vectors,
                                       const torch::Tensor &g_i, const torch::Tensor &g_j) override;

 private:
  torch::jit::Module module_;
};

}    // namespace so3krates

#endif
