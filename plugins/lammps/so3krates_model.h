/* Thin, torch-free interface to an exported so3krates TorchScript file.

   The LAMMPS pair style and libtorch live in separate translation units because the LAMMPS
   headers (fmt v10 "v10_lmp") and the torch headers (fmt v11) bundle incompatible copies of
   {fmt} under the same include guards. Only the standard library crosses this interface;
   every failure is reported as std::runtime_error with a readable message (c10::Error is
   caught inside so3krates_model.cpp and never escapes). */
#ifndef SO3KRATES_MODEL_H
#define SO3KRATES_MODEL_H

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace so3krates {

// In-place sum over all MPI ranks of n doubles (MPI_Allreduce(MPI_IN_PLACE, ..., MPI_SUM)).
using AllreduceSum = std::function<void(double *, int)>;
// Maximum over all MPI ranks of one integer (MPI_Allreduce(..., MPI_MAX)).
using AllreduceMax = std::function<long(long)>;
// Per-atom exchange of buf[ntot * width] (rows in the rank's atom order, local atoms first):
// forward copies every owned row to the rows of its ghost images (LAMMPS forward communication);
// reverse adds every ghost row to its owner's row (LAMMPS reverse communication).
using Exchange = std::function<void(double *buf, int width)>;

// What the model needs from the engine's parallel environment (all collective).
struct Collectives {
  AllreduceSum allreduce;
  AllreduceMax allreduce_max;
  Exchange forward;
  Exchange reverse;
};

// The periodic box handed to the model (EFA models need it): rows a, b, c in Å, periodicity.
struct Box {
  double cell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  bool pbc[3] = {false, false, false};
};

class Model {
 public:
  // device: "cpu" or "cuda"; device_index is used for "cuda" only.
  // Throws std::runtime_error: file not readable, not a TorchScript archive, no metadata,
  // missing methods, no usable CUDA device.
  Model(const std::string &path, const std::string &device, int device_index);
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  // raw text of the extra file so3krates/metadata.json ("" when absent)
  const std::string &metadata_json() const { return metadata_; }
  bool has_method(const std::string &name) const;

  // dtype of the model parameters/inputs: "float32" or "float64"
  void set_dtype(const std::string &dtype);
  // Chooses the interface: the staged methods engine_begin/engine_continue when the file has them
  // (any number of global stages, box-aware), else the legacy pair atomic_energies_from_edges /
  // global_partials with num_globals values in one stage.
  void set_interface(int legacy_num_globals);
  bool staged() const { return staged_; }
  int num_stages() const { return num_stages_; }
  const std::vector<std::string> &stage_names() const { return stage_names_; }
  // values per atom of the per-atom exchange stage (charges / Hirshfeld ratios), 0 if none
  int exchange_width() const { return exchange_width_; }
  // ghost shell (Å, no skin) the file needs: engine_ghost_shell() of staged files, else < 0
  double ghost_shell() const { return ghost_shell_; }
  // Pruning of the per-layer work to the atoms that need it (staged files; default on).
  void set_prune(bool on);
  std::string device_string() const;

  /* One energy/force evaluation on this rank's local + ghost atoms.
     x[3*ntot] positions (Å), z[ntot] atomic numbers, edges idx_i -> idx_j: every pair within the
     model cutoff for every atom (local and ghost) plus the long-range pairs of local atoms; the
     first nlocal atoms are owned by this rank. box: the simulation box (EFA models).
     Outputs: atomic_energies[ntot] (eV; only the first nlocal are meaningful),
     dEdx[3*ntot] = dE_total/dx for every local and ghost atom (eV/Å), where E_total's
     dependence through the global sums is included (see the scheme in so3krates_model.cpp), and
     dEdcell[9] = this rank's share of the explicit derivative of E_total by the cell rows
     (eV/Å; nonzero for periodic EFA models only; the virial needs -cell^T dEdcell).
     Returns the sum of the first nlocal atomic energies (eV).
     Collective: every rank must call it (global terms use allreduce). */
  double compute(const double *x, int ntot, int nlocal, const std::vector<int64_t> &z,
                 const std::vector<int64_t> &idx_i, const std::vector<int64_t> &idx_j,
                 double total_charge, double num_unpaired_electrons, const Box &box,
                 const Collectives &comm, std::vector<double> &atomic_energies,
                 std::vector<double> &dEdx, double *dEdcell);

  // atoms whose features the last evaluation computed: counts[k] = atoms within k hops of the
  // atoms whose final features are needed, k = 0..num_layers (staged files; empty otherwise)
  const std::vector<long> &layer_counts() const { return layer_counts_; }

  static void set_num_threads(int n);
  // true when libtorch sees a CUDA device (loads libtorch_cuda.so on demand)
  static bool cuda_available(std::string *why = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string metadata_;
  bool staged_ = false;
  int num_stages_ = 0;
  std::vector<std::string> stage_names_;
  std::vector<bool> stage_exchange_;    // per stage: per-atom exchange (else sum over ranks)
  int exchange_width_ = 0;
  double ghost_shell_ = -1.0;
  std::vector<long> stage_sizes_;    // sizes of the last evaluation's stage vectors
  std::vector<long> layer_counts_;
};

}    // namespace so3krates

#endif
