/* pair_style so3krates: exported So3krates/SO3LR TorchScript models in LAMMPS.

   pair_style so3krates [device cpu|cuda] [threads N] [charge Q] [unpaired_electrons S] [prune yes|no]
   pair_coeff * * model.pt El1 El2 ...        (one element symbol per atom type)

   Needs newton pair on and units metal (eV, Å) or real (kcal/mol, Å; converted).
   Runs on local + ghost atoms with a full neighbour list including ghost neighbours (local atoms:
   pairs within max(cutoff, cutoff_lr), ghosts: within cutoff); the ghost shell is the model's
   receptive field (layers x cutoff + cutoff_lr) so domain decomposition is exact; global terms
   (charge constraint, EFA, charge/spin embedding) are reduced over MPI in stages. */
#ifndef LMP_PAIR_SO3KRATES_H
#define LMP_PAIR_SO3KRATES_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace so3krates {
class Model;
}

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

  // per-atom exchange stages (partial charges / Hirshfeld ratios of owned atoms -> ghost images)
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  void allocate();
  void check_units();
  void check_element_order();
  void read_metadata(const std::string &text, const std::string &path);
  void check_box();
  void raise_neighbor_limits();

  std::unique_ptr<so3krates::Model> model;
  std::string model_path;
  std::string device = "cpu";
  int nthreads = 0;
  double total_charge = 0.0;
  double num_unpaired_electrons = 0.0;
  bool prune = true;
  bool reported = false;          // pruning statistics printed (first evaluation)

  // from the model metadata
  double cutoff = 0.0;             // model cutoff r_c (Å) of the message passing
  double cutoff_lr = 0.0;          // long-range pair cutoff (Å), 0 when none
  double graph_cutoff = 0.0;       // edges handed to the model: max(cutoff, cutoff_lr)
  double receptive_field = 0.0;    // metadata receptive field (Å): the legacy ghost shell
  double ghost_shell = 0.0;        // ghost shell (Å, without skin) this file needs
  int num_globals = 0;
  bool efa = false;                // Euclidean fast attention: needs the box (periodic or open)
  std::string dtype;
  std::vector<int> species;        // atomic numbers the model knows

  std::vector<int64_t> type2z;    // LAMMPS type (1..ntypes) -> atomic number
  double energy_factor = 1.0;     // eV -> LAMMPS energy unit

  // work buffers
  std::vector<int64_t> zbuf, idx_i, idx_j;
  std::vector<double> ebuf, gbuf;
  double *xchg_buf = nullptr;     // buffer of the exchange being communicated [nall * xchg_width]
  int xchg_width = 0;
};

}    // namespace LAMMPS_NS

#endif
