/* pair_style so3krates: exported So3krates/SO3LR models in LAMMPS.

   pair_style so3krates [device cpu|cuda] [threads N] [charge Q] [unpaired_electrons S] [chunk P] [malloc keep|system]
   pair_coeff * * model.pt El1 El2 ...        (one element symbol per atom type)

   Needs newton pair on and units metal (eV, Å) or real (kcal/mol, Å; converted). Every rank computes
   the features of its own atoms only: after each layer the owned atoms' features go to their ghost
   images (forward communication) and the ghost rows of the attention sums back to their owners
   (reverse communication), so the ghost shell is one cutoff (max(cutoff, cutoff_lr)) plus the skin.
   Global terms (charge constraint, EFA, charge/spin embedding) are summed over MPI. */
#ifndef LMP_PAIR_SO3KRATES_H
#define LMP_PAIR_SO3KRATES_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace so3krates {
class Model;
struct Step;
struct Result;
}    // namespace so3krates

namespace LAMMPS_NS {

class PairSo3krates : public Pair {
 public:
  PairSo3krates(class LAMMPS *);
  ~PairSo3krates() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;

  // halo exchange of the model's per-atom rows (features, attention sums, charges)
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  void allocate();
  void check_units();
  void load_model(const std::string &path);
  void read_metadata(const std::string &text, const std::string &path);
  void map_elements(char **symbols);
  void check_element_order();
  void check_box();
  void raise_neighbor_limits();
  void build_pairs(so3krates::Step &step);
  void find_owners(so3krates::Step &step);
  void apply_result(const so3krates::Result &res, int nall);
  void report(const so3krates::Result &res, int nlocal, int nall);
  void keep_freed_memory();

  std::unique_ptr<so3krates::Model> model;
  std::string model_path;
  std::string device = "cpu";
  int nthreads = 0;
  bool malloc_keep = true;        // 'malloc keep|system': keep freed memory in the process (see keep_freed_memory)
  long chunk = 0;                 // pairs per call of a pair stage (0: the model's default)
  double total_charge = 0.0;
  double num_unpaired_electrons = 0.0;
  bool reported = false;          // decomposition statistics printed (first evaluation)

  // from the model metadata
  double cutoff = 0.0;            // model cutoff r_c (Å) of the message passing
  double cutoff_lr = 0.0;         // long-range pair cutoff (Å), 0 when none
  double pair_cutoff = 0.0;       // neighbour list and ghost shell: max(cutoff, cutoff_lr)
  bool efa = false;               // Euclidean fast attention: needs the box (periodic or open)
  int efa_qk_degrees = 0;         // direction-dependent EFA queries/keys: open boxes only
  std::unordered_map<tagint, int> owned_by_tag;   // find_owners: tag -> index of the owned atom
  std::string dtype;
  std::vector<int> species;       // atomic numbers the model knows

  std::vector<int64_t> type2z;    // LAMMPS type (1..ntypes) -> atomic number
  double energy_factor = 1.0;     // eV -> LAMMPS energy unit

  std::unique_ptr<so3krates::Step> step;
  std::unique_ptr<so3krates::Result> result;
  double *xchg_buf = nullptr;     // rows being communicated [nall * xchg_width]
  int xchg_width = 0;
};

}    // namespace LAMMPS_NS

#endif
