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
  void set_num_globals(int k) { num_globals_ = k; }
  std::string device_string() const;

  /* One energy/force evaluation on this rank's local + ghost atoms.
     x[3*ntot] positions (Å), z[ntot] atomic numbers, edges idx_i -> idx_j (all i, local and
     ghost, both directions), the first nlocal atoms are owned by this rank.
     Outputs: atomic_energies[ntot] (eV; only the first nlocal are meaningful) and
     dEdx[3*ntot] = dE_total/dx for every local and ghost atom (eV/Å), where E_total's
     dependence through the global sums is included (see the scheme in so3krates_model.cpp).
     Returns the sum of the first nlocal atomic energies (eV).
     Collective: every rank must call it (global terms use allreduce). */
  double compute(const double *x, int ntot, int nlocal, const std::vector<int64_t> &z,
                 const std::vector<int64_t> &idx_i, const std::vector<int64_t> &idx_j,
                 double total_charge, double num_unpaired_electrons,
                 const AllreduceSum &allreduce, std::vector<double> &atomic_energies,
                 std::vector<double> &dEdx);

  static void set_num_threads(int n);
  // true when libtorch sees a CUDA device (loads libtorch_cuda.so on demand)
  static bool cuda_available(std::string *why = nullptr);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string metadata_;
  int num_globals_ = 0;
};

}    // namespace so3krates

#endif
