/* Thin, torch-free interface to an exported so3krates model (the pair style's only view of torch).

   The LAMMPS pair style and libtorch live in separate translation units because the LAMMPS
   headers (fmt v10 "v10_lmp") and the torch headers (fmt v11) bundle incompatible copies of
   {fmt} under the same include guards. Only the standard library crosses this interface; every
   failure is reported as std::runtime_error with a readable message (c10::Error is caught on the
   torch side and never escapes). */
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
// Per-atom exchange of buf[ntot * width] (rows in the rank's atom order, owned atoms first):
// forward copies every owned row to the rows of its ghost images (LAMMPS forward communication);
// reverse adds every ghost row to its owner's row (LAMMPS reverse communication).
using Exchange = std::function<void(double *buf, int width)>;

// What the model needs from the engine's parallel environment (all collective).
struct Collectives {
  AllreduceSum allreduce;
  Exchange forward;
  Exchange reverse;
};

// The box handed to the model (EFA models need it): rows a, b, c in Å, periodicity.
struct Box {
  double cell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
  bool pbc[3] = {false, false, false};
};

// One evaluation's atoms and pairs on this rank (owned atoms 0..nlocal-1, then ghosts).
// Pairs: every pair within the model cutoff (pair_i/pair_j) and within the long-range cutoff
// (lr_i/lr_j) with at least one owned atom, each pair once over all ranks.
struct Step {
  const double *x = nullptr;       // positions [3 * ntot], Å
  int ntot = 0;
  int nlocal = 0;
  std::vector<int64_t> z;          // atomic numbers [ntot]
  std::vector<int64_t> pair_i, pair_j, lr_i, lr_j;
  // [ntot] or empty: for a ghost atom that is a periodic image of an atom this rank owns, the owner's
  // index (< nlocal), else -1. Such ghosts share their owner's projected row (computed once).
  std::vector<int64_t> owner;
  double total_charge = 0.0;       // e, whole system
  double num_unpaired_electrons = 0.0;
  Box box;
};

// Energies and gradients of one evaluation on this rank.
struct Result {
  double energy = 0.0;                   // eV: this rank's share of the total
  std::vector<double> atomic_energies;   // [ntot] eV; ghost rows: pair energies this rank holds
  std::vector<double> dEdx;              // [3 * ntot] eV/Å; ghost rows belong to their owners
  double dEdcell[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};   // eV/Å, explicit box dependence (periodic EFA)
  long rows_projected = 0;               // atoms whose layer inputs were projected (owned + ghosts in pairs)
};

// Sizes of the model's stages (from the exported file's engine_layout()).
struct Layout {
  int num_layers = 0;
  int num_features = 0;      // F (invariant features per atom)
  int feature_width = 0;     // F + m_tot: values per atom exchanged after each layer
  int table_width = 0;       // per-atom table of the message stage
  int exchange_width = 0;    // partial charge and/or Hirshfeld ratio (0: no long-range terms)
  int readout_sums = 0;      // sums of the charge constraint (0 or 2)
  bool embedding_sums = false;
  bool zbl = false;
  std::vector<bool> efa;     // per layer
};

class Model {
 public:
  // device: "cpu" or "cuda"; device_index is used for "cuda" only.
  // A file named *.pt2 is loaded as a .pt2 package (AOTInductor, CPU only), any other as TorchScript.
  // Throws std::runtime_error: file not readable, not a TorchScript archive / .pt2 package, missing
  // engine methods or programs, no usable CUDA device.
  Model(const std::string &path, const std::string &device, int device_index);
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  // raw text of the so3krates metadata JSON ("" when absent): the extra file so3krates/metadata.json of a
  // TorchScript file, the AOTInductor metadata "so3krates_metadata" of a .pt2 package
  const std::string &metadata_json() const { return metadata_; }
  const Layout &layout() const { return layout_; }
  // dtype of the model parameters/inputs: "float32" or "float64"
  void set_dtype(const std::string &dtype);
  // pairs per call of a pair stage (bounds the temporary memory); 0 = default
  void set_chunk(long pairs);
  std::string device_string() const;

  // One energy/force evaluation. Collective: every rank calls it, also one without atoms.
  void compute(const Step &step, const Collectives &comm, Result &out);

  static void set_num_threads(int n);
  // TorchScript kernel fusion off for the process (SO3KRATES_JIT_FUSION=on keeps torch's default); load() calls it
  static void no_jit_fusion();
  // true when libtorch sees a CUDA device (loads libtorch_cuda.so on demand)
  static bool cuda_available(std::string *why = nullptr);

 private:
  void load_pt2(const std::string &path);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string metadata_;
  Layout layout_;
};

}    // namespace so3krates

#endif
