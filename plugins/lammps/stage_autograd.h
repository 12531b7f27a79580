/* The engine's autograd graph (torch side): every model stage and every communication is one
   autograd node, so one backward call gives the exact gradient on any number of ranks.

   run_stage / run_pairs wrap a per-atom / pair stage of the model (forward: the stage, backward:
   its explicit vector-Jacobian product, recomputing in chunks: nothing but the stage's inputs is
   kept). CommChain wraps LAMMPS' forward and reverse communication and MPI_Allreduce; each is the
   other's adjoint. All communication nodes are threaded on one chain of dummy "token" tensors, so
   the backward pass runs them in exactly the reverse order of the forward pass on every rank
   (collective calls must match across ranks), also when the autograd engine could run independent
   nodes in another order. */
#ifndef SO3KRATES_STAGE_AUTOGRAD_H
#define SO3KRATES_STAGE_AUTOGRAD_H

#include "so3krates_model.h"
#include "stage_backend.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace so3krates {

// One per-atom stage as one autograd node.
std::vector<torch::Tensor> run_stage(StageBackend *backend, const std::string &stage, int64_t k,
                                     const std::vector<torch::Tensor> &inputs);

// One pair stage over all pairs (ii, jj), called on chunks of `chunk` pairs: returns [n, w], the
// sum over the pairs of what each adds to its two atoms' rows (table: per-atom inputs [n, t]).
torch::Tensor run_pairs(StageBackend *backend, const std::string &stage, int64_t k, const torch::Tensor &z,
                        const torch::Tensor &ii, const torch::Tensor &jj, int64_t chunk,
                        const torch::Tensor &table, const torch::Tensor &vectors);

class CommChain {
 public:
  CommChain(const Collectives *comm, int64_t nlocal, int64_t ntot);
  // owned rows [nlocal, w] -> all rows [ntot, w] (ghost rows copied from their owners)
  torch::Tensor forward_halo(const torch::Tensor &owned);
  // all rows [ntot, w] -> owned rows [nlocal, w] (ghost rows added to their owners)
  torch::Tensor reverse_halo(const torch::Tensor &rows);
  // sum over all ranks (any shape)
  torch::Tensor allreduce(const torch::Tensor &partial);
  // zero with the chain in its graph: add it to the energy so that the chain is differentiated
  torch::Tensor anchor() const { return token_ * 0.0; }

 private:
  torch::Tensor run(int kind, const torch::Tensor &x);
  const Collectives *comm_;
  int64_t nlocal_, ntot_;
  torch::Tensor token_;
};

}    // namespace so3krates

#endif
