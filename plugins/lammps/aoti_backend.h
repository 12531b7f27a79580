/* AOTIBackend: the engine stages of a .pt2 package (torch.export + AOTInductor), the successor of
   the TorchScript file (see export/pt2.py and export/pt2_programs.py).

   Every stage is a compiled program of the package ("project_0", "messages_0_vjp",
   "update_1_periodic", ...), loaded on first use with torch::inductor::AOTIModelPackageLoader.
   The programs need at least 2 rows (atoms or pairs); calls with 0 or 1 rows are padded exactly as
   export/pt2_engine.py (run_padded) does, from each program's AOTInductor metadata: rows_in /
   rows_out (inputs / outputs with one row per atom or pair), num_inputs (inputs before the
   gradients of a *_vjp program). The "check" stage (finite positions, known elements) runs here. */
#ifndef SO3KRATES_AOTI_BACKEND_H
#define SO3KRATES_AOTI_BACKEND_H

#include "stage_backend.h"

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace torch::inductor {
class AOTIModelPackageLoader;
}

namespace so3krates {

class AOTIBackend : public StageBackend {
 public:
  // Loads the package's "model" program and reads its metadata; throws std::runtime_error.
  explicit AOTIBackend(const std::string &path);
  ~AOTIBackend() override;

  // AOTInductor metadata of the "model" program (so3krates_metadata, engine_layout, species, ...)
  const std::unordered_map<std::string, std::string> &metadata() const { return metadata_; }

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
  struct Program {
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    std::vector<int64_t> rows_in, rows_out;
    size_t num_inputs = 0;
  };
  Program &program(const std::string &name);
  std::vector<torch::Tensor> run(const std::string &name, const std::vector<torch::Tensor> &inputs);
  std::string name(const std::string &stage, int64_t k, bool vjp, const std::vector<torch::Tensor> &inputs) const;
  void check(const std::vector<torch::Tensor> &inputs) const;

  std::string path_;
  std::unordered_map<std::string, std::string> metadata_;
  std::map<std::string, Program> programs_;
  std::vector<int64_t> species_;
  std::vector<bool> per_boundary_;    // per layer: EFA stages have an open and a periodic program
};

}    // namespace so3krates

#endif
