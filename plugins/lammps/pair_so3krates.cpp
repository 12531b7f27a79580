/* pair_style so3krates — see pair_so3krates.h for the input syntax.

   Data flow per step (on every MPI rank):
     local + ghost atoms (ghost shell = the file's engine_ghost_shell() = max(layers x cutoff,
     cutoff_lr) + skin, so every local atom's L-layer neighbourhood and its long-range partners
     are present; legacy files: receptive_field = layers x cutoff + cutoff_lr); one full
     neighbour list incl. neighbours of ghosts: local atoms list pairs within
     max(cutoff, cutoff_lr) + skin (cutforce), ghosts within cutoff + skin (cutghost)
     -> edges i->j: |x_j - x_i| < cutoff for every atom, < cutoff_lr for local centres
     -> the model's staged entry points (engine_begin / engine_continue, so3krates_model.cpp):
        the module prunes the layers to the atoms each layer needs; sum stages (charge/spin
        embedding, EFA, total charge) are MPI_Allreduce'd; the exchange stage (partial charges,
        Hirshfeld ratios of local atoms) goes to the ghost images by forward communication
        (pack/unpack_forward_comm) and its adjoint back by reverse communication;
        per-atom energies [Ntot], E_rank = sum of the first nlocal
     -> autograd dE/dx on local and ghost atoms; forces on ghosts are reverse-communicated by
        LAMMPS (newton on), so the result does not depend on the number of ranks.
   Virial: F.r (virial_fdotr_compute) or, when LAMMPS asks for it explicitly, the same sum
   x_i (x) f_i over local + ghost atoms of this style's own forces, plus -h^T dE/dh for models
   whose energy depends on the box itself (periodic EFA); per-atom virial is the per-atom term
   x_i (x) f_i plus an equal share of the box term per owned atom (sums to the global virial;
   not unique for many-body models). */

#include "pair_so3krates.h"

#include "so3krates_model.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <map>

using namespace LAMMPS_NS;

namespace {

const char *const ELEMENTS[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
const int NELEMENTS = sizeof(ELEMENTS) / sizeof(ELEMENTS[0]);

int symbol_to_z(const std::string &s)
{
  for (int z = 1; z < NELEMENTS; ++z)
    if (s == ELEMENTS[z]) return z;
  return 0;
}

std::string z_to_symbol(int z)
{
  if (z > 0 && z < NELEMENTS) return ELEMENTS[z];
  return "Z=" + std::to_string(z);
}

// Standard atomic weights (amu) by atomic number (IUPAC values as tabulated in ASE's
// ase.data.atomic_masses), used to check that pair_coeff names the elements in atom-type order.
const double MASSES[] = {
    1.0000, 1.0080, 4.0026, 6.9400, 9.0122, 10.8100, 12.0110, 14.0070, 15.9990, 18.9984, 20.1797,
    22.9898, 24.3050, 26.9815, 28.0850, 30.9738, 32.0600, 35.4500, 39.9480, 39.0983, 40.0780,
    44.9559, 47.8670, 50.9415, 51.9961, 54.9380, 55.8450, 58.9332, 58.6934, 63.5460, 65.3800,
    69.7230, 72.6300, 74.9216, 78.9710, 79.9040, 83.7980, 85.4678, 87.6200, 88.9058, 91.2240,
    92.9064, 95.9500, 97.9072, 101.0700, 102.9055, 106.4200, 107.8682, 112.4140, 114.8180, 118.7100,
    121.7600, 127.6000, 126.9045, 131.2930, 132.9055, 137.3270, 138.9055, 140.1160, 140.9077,
    144.2420, 144.9128, 150.3600, 151.9640, 157.2500, 158.9254, 162.5000, 164.9303, 167.2590,
    168.9342, 173.0540, 174.9668, 178.4900, 180.9479, 183.8400, 186.2070, 190.2300, 192.2170,
    195.0840, 196.9666, 200.5920, 204.3800, 207.2000, 208.9804, 208.9824, 209.9872, 222.0176,
    223.0197, 226.0254, 227.0277, 232.0377, 231.0359, 238.0289, 237.0482, 244.0642, 243.0614,
    247.0703, 247.0703, 251.0796, 252.0830, 257.0951, 258.0984, 259.1010, 262.1100, 267.1220,
    268.1260, 271.1340, 270.1330, 269.1338, 278.1560, 281.1650, 281.1660, 285.1770, 286.1820,
    289.1900, 289.1940, 293.2040, 293.2080, 294.2140};
const int NMASSES = sizeof(MASSES) / sizeof(MASSES[0]);

const int SUPPORTED_FORMAT_MAJOR = 1;

}    // namespace

/* ---------------------------------------------------------------------- */

PairSo3krates::PairSo3krates(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  ghostneigh = 1;    // neighbours of ghost atoms are needed for multi-layer models
}

PairSo3krates::~PairSo3krates()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairSo3krates::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
}

void PairSo3krates::check_units()
{
  std::string units = update->unit_style;
  if (units == "metal")
    energy_factor = 1.0;
  else if (units == "real")
    energy_factor = utils::get_conversion_factor(utils::ENERGY, utils::METAL2REAL);
  else
    error->all(FLERR,
               "pair style so3krates supports 'units metal' (eV, Å) and 'units real' "
               "(kcal/mol, Å), not 'units {}'",
               units);
}

/* ----------------------------------------------------------------------
   pair_style so3krates [device cpu|cuda] [threads N] [charge Q] [unpaired_electrons S]
                        [prune yes|no]
------------------------------------------------------------------------- */

void PairSo3krates::settings(int narg, char **arg)
{
  check_units();
  int iarg = 0;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "pair_style so3krates: keyword '{}' needs a value", key);
    std::string val = arg[iarg + 1];
    if (key == "device") {
      if (val != "cpu" && val != "cuda")
        error->all(FLERR, "pair_style so3krates: device must be cpu or cuda, not '{}'", val);
      device = val;
    } else if (key == "threads") {
      nthreads = utils::inumeric(FLERR, val, false, lmp);
      if (nthreads < 1) error->all(FLERR, "pair_style so3krates: threads must be >= 1");
    } else if (key == "charge") {
      total_charge = utils::numeric(FLERR, val, false, lmp);
    } else if (key == "unpaired_electrons") {
      num_unpaired_electrons = utils::numeric(FLERR, val, false, lmp);
    } else if (key == "prune") {
      prune = utils::logical(FLERR, val, false, lmp) != 0;
    } else {
      error->all(FLERR,
                 "pair_style so3krates: unknown keyword '{}' (known: device cpu|cuda, "
                 "threads N, charge Q, unpaired_electrons S, prune yes|no)",
                 key);
    }
    iarg += 2;
  }
  if (nthreads > 0) {
    try {
      so3krates::Model::set_num_threads(nthreads);
    } catch (std::exception &e) {
      error->all(FLERR, std::string("pair_style so3krates: ") + e.what());
    }
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * model.pt El1 El2 ... (one element per atom type)
------------------------------------------------------------------------- */

void PairSo3krates::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;

  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff so3krates: expected 'pair_coeff * * model.pt' followed by {} element "
               "symbol(s), one per atom type, but got {} symbol(s)",
               ntypes, narg - 3 > 0 ? narg - 3 : 0);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff so3krates: the first two arguments must be '* *'");

  model_path = arg[2];

  int device_index = 0;
  if (device == "cuda") {
    MPI_Comm shm;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &shm);
    MPI_Comm_rank(shm, &device_index);
    MPI_Comm_free(&shm);
  }

  model.reset();
  try {
    model = std::make_unique<so3krates::Model>(model_path, device, device_index);
  } catch (std::exception &e) {
    error->all(FLERR, std::string("pair_coeff so3krates: ") + e.what());
  }

  const std::string &meta = model->metadata_json();
  if (meta.empty())
    error->all(FLERR,
               "pair_coeff so3krates: '{}' is a TorchScript file but has no so3krates metadata "
               "(extra file so3krates/metadata.json): not a so3krates export. Export the model "
               "with 'so3krates export'",
               model_path);
  read_metadata(meta, model_path);

  bool has_energies = false, has_partials = false;
  try {
    has_energies = model->has_method("atomic_energies_from_edges");
    has_partials = model->has_method("global_partials");
    model->set_dtype(dtype);
    model->set_interface(num_globals);
    model->set_prune(prune);
  } catch (std::exception &e) {
    error->all(FLERR, std::string("pair_coeff so3krates: ") + e.what());
  }
  // staged files get long-range partners' charges/Hirshfeld ratios by communication: the ghost
  // shell is max(layers x cutoff, cutoff_lr); legacy files compute them: receptive_field
  ghost_shell = model->staged() ? model->ghost_shell() : receptive_field;
  if (!(ghost_shell >= graph_cutoff))
    error->all(FLERR, "pair_coeff so3krates: '{}' asks for a ghost shell of {} A, smaller than its cutoffs {} A",
               model_path, ghost_shell, graph_cutoff);
  comm_forward = comm_reverse = model->exchange_width();
  if (!model->staged()) {
    // files written before the staged entry points (or stand-ins with the legacy interface)
    if (!has_energies)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' lacks the methods engine_begin/engine_continue (and "
                 "atomic_energies_from_edges) that LAMMPS needs; re-export it with this version "
                 "of so3krates ('so3krates export CHECKPOINT -o model.pt')",
                 model_path);
    if (num_globals > 0 && !has_partials)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' declares num_globals = {} but lacks the method "
                 "global_partials; re-export it",
                 model_path, num_globals);
    if (efa)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' uses Euclidean fast attention (EFA) but was exported "
                 "without the staged entry points (engine_begin/engine_continue) that reduce its "
                 "global sums over MPI ranks; re-export it with this version of so3krates "
                 "('so3krates export CHECKPOINT -o model.pt')",
                 model_path);
    if (comm->me == 0)
      error->warning(FLERR,
                     "pair so3krates: '{}' was exported without the staged entry points "
                     "(engine_begin/engine_continue): every layer runs on every ghost atom (no "
                     "pruning: slow when ghosts outnumber local atoms) and a charge/spin embedding "
                     "is normalised per rank (exact for neutral, closed-shell systems or one rank); "
                     "re-export it with this version of so3krates",
                     model_path);
  }
  check_box();

  // map LAMMPS types to atomic numbers
  std::string known;
  for (int z : species) known += (known.empty() ? "" : " ") + z_to_symbol(z);
  type2z.assign(ntypes + 1, 0);
  for (int itype = 1; itype <= ntypes; ++itype) {
    std::string sym = arg[2 + itype];
    int z = symbol_to_z(sym);
    if (z == 0)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' (atom type {}) is not an element symbol; give one "
                 "element per atom type, e.g. H C N O",
                 sym, itype);
    bool ok = false;
    for (int s : species) ok = ok || (s == z);
    if (!ok)
      error->all(FLERR,
                 "pair_coeff so3krates: element {} (atom type {}) is not in the model '{}'; "
                 "the model knows: {}",
                 sym, itype, model_path, known);
    type2z[itype] = z;
  }
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;

  if (comm->me == 0) {
    std::string stages;
    for (const auto &name : model->stage_names()) stages += (stages.empty() ? "" : ",") + name;
    utils::logmesg(lmp,
                   "so3krates: model {} | elements {} | cutoff {} A | long-range cutoff {} A | "
                   "ghost shell {} A + skin | global stages {} | EFA {} | pruning {} | dtype {} | "
                   "device {}\n",
                   model_path, known, cutoff, cutoff_lr, ghost_shell,
                   stages.empty() ? "none" : stages, efa ? (domain->xperiodic ? "periodic" : "open") : "no",
                   model->staged() ? (prune ? "on" : "off") : "n/a (legacy file)", dtype,
                   model->device_string());
  }
}

// EFA models see the box: fully periodic boxes use the reciprocal-lattice EFA with the LAMMPS
// box matrix, fully non-periodic ones (boundary f f f / s s s / m m m) the open (Lebedev) variant.
void PairSo3krates::check_box()
{
  if (!efa) return;
  const int np = domain->xperiodic + domain->yperiodic + domain->zperiodic;
  if (np != 0 && np != 3)
    error->all(FLERR,
               "pair so3krates: '{}' uses Euclidean fast attention (EFA), which needs a fully "
               "periodic box (boundary p p p: reciprocal-lattice EFA) or a fully non-periodic one "
               "(boundary f f f: open EFA), not boundary {} {} {}; for a slab or wire use "
               "'boundary p p p' with a vacuum gap",
               model_path, domain->xperiodic ? "p" : "f", domain->yperiodic ? "p" : "f",
               domain->zperiodic ? "p" : "f");
}

void PairSo3krates::read_metadata(const std::string &text, const std::string &path)
{
  json meta;
  try {
    meta = json::parse(text);
  } catch (std::exception &e) {
    error->all(FLERR, "pair_coeff so3krates: '{}' has corrupt so3krates metadata ({})", path,
               e.what());
  }
  if (!meta.is_object())
    error->all(FLERR, "pair_coeff so3krates: '{}' has corrupt so3krates metadata (not an object)",
               path);
  auto need = [&](const char *key) -> const json & {
    if (!meta.contains(key))
      error->all(FLERR, "pair_coeff so3krates: '{}' metadata lacks '{}'; re-export the model",
                 path, key);
    return meta[key];
  };
  try {
    // format_version: 1, "1" or "1.x"
    const json &fv = need("format_version");
    int major = 0;
    if (fv.is_number()) major = static_cast<int>(std::floor(fv.get<double>()));
    else if (fv.is_string()) major = std::atoi(fv.get<std::string>().c_str());
    if (major < 1 || major > SUPPORTED_FORMAT_MAJOR)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' has format_version {} but this plugin reads format "
                 "version {}; install the matching so3krates version",
                 path, fv.dump(), SUPPORTED_FORMAT_MAJOR);
    cutoff = need("cutoff").get<double>();
    cutoff_lr = 0.0;
    if (meta.contains("cutoff_lr") && meta["cutoff_lr"].is_number())
      cutoff_lr = meta["cutoff_lr"].get<double>();
    // the model filters the edges it is given: pass pairs up to the larger of both cutoffs
    graph_cutoff = std::max(cutoff, cutoff_lr);
    if (meta.contains("receptive_field") && !meta["receptive_field"].is_null())
      receptive_field = meta["receptive_field"].get<double>();
    else if (meta.contains("num_layers"))
      receptive_field = cutoff * meta["num_layers"].get<double>();
    else
      need("receptive_field");
    if (!(cutoff > 0.0) || !(receptive_field >= graph_cutoff))
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' metadata has cutoff {} and receptive_field {}: need "
                 "0 < cutoff <= receptive_field",
                 path, graph_cutoff, receptive_field);
    species.clear();
    for (const auto &z : need("species")) species.push_back(z.get<int>());
    if (species.empty())
      error->all(FLERR, "pair_coeff so3krates: '{}' metadata lists no species", path);
    num_globals = 0;
    if (meta.contains("num_globals") && !meta["num_globals"].is_null())
      num_globals = meta["num_globals"].get<int>();
    dtype = meta.contains("dtype") ? meta["dtype"].get<std::string>() : std::string("float32");
    // EFA (global attention) sees every atom: exact through the staged entry points only
    efa = meta.contains("efa") && meta["efa"].is_boolean() && meta["efa"].get<bool>();
    if (meta.contains("units") && meta["units"].is_object()) {
      const json &u = meta["units"];
      auto is = [&](const char *k, std::initializer_list<const char *> ok) {
        if (!u.contains(k) || !u[k].is_string()) return true;
        std::string v = u[k].get<std::string>();
        for (const char *o : ok)
          if (v == o) return true;
        return false;
      };
      if (!is("length", {"Å", "A", "Angstrom", "angstrom", "\xc3\x85"}) ||
          !is("energy", {"eV", "ev"}))
        error->all(FLERR, "pair_coeff so3krates: '{}' uses units {} (expected Å and eV)", path,
                   u.dump());
    }
  } catch (json::exception &e) {
    error->all(FLERR, "pair_coeff so3krates: '{}' has corrupt so3krates metadata ({})", path,
               e.what());
  }
}

/* ---------------------------------------------------------------------- */

void PairSo3krates::init_style()
{
  if (!model) error->all(FLERR, "pair so3krates: pair_coeff * * model.pt ... was not given");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair style so3krates requires newton pair on (forces on ghost atoms are sent "
               "back to their owners); remove 'newton off' or use 'newton on'");

  check_units();

  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair style so3krates needs comm_modify mode single");

  neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);

  // ghost shell: every atom that can influence a local atom through the L message-passing
  // layers (L x cutoff) or as a long-range partner (cutoff_lr) must be present, plus the skin.
  double ghost = ghost_shell + neighbor->skin;
  if (comm->cutghostuser < ghost) {
    if (comm->me == 0 && comm->cutghostuser > 0.0)
      utils::logmesg(lmp, "so3krates: communication cutoff raised from {} to {} A\n",
                     comm->cutghostuser, ghost);
    comm->cutghostuser = ghost;
  }
  if (comm->style != Comm::BRICK) {
    // comm_style tiled cannot fetch ghosts beyond one periodic box length
    const double *prd = domain->prd;
    for (int d = 0; d < 3; ++d)
      if (domain->periodicity[d] && ghost > prd[d])
        error->all(FLERR,
                   "pair style so3krates: box length {} along {} is smaller than the ghost shell "
                   "{} A (model ghost shell + skin) which comm_style tiled cannot provide; use "
                   "comm_style brick or a larger box",
                   prd[d], "xyz"[d], ghost);
  }

  check_element_order();
  check_box();
  raise_neighbor_limits();
}

// Local atoms list every neighbour within max(cutoff, cutoff_lr) + skin: with SO3LR's 12 Å that
// is ~1200 atoms in water, close to LAMMPS' default 'neigh_modify one 2000'. Raise 'one' (and
// 'page') to twice the count expected at the system's mean density, unless the input set more.
void PairSo3krates::raise_neighbor_limits()
{
  const double vol = domain->xprd * domain->yprd * domain->zprd;
  if (!(vol > 0.0) || atom->natoms <= 0) return;
  const double density = std::min(static_cast<double>(atom->natoms) / vol, 0.3);    // atoms/Å^3
  const double r = graph_cutoff + neighbor->skin;
  const double expected = 4.0 / 3.0 * M_PI * r * r * r * std::max(density, 0.1);
  const int want = static_cast<int>(std::ceil(2.0 * expected / 100.0) * 100.0);
  if (want > neighbor->oneatom) {
    if (comm->me == 0)
      utils::logmesg(lmp, "so3krates: neigh_modify one raised from {} to {} ({} A neighbour lists)\n",
                     neighbor->oneatom, want, r);
    neighbor->oneatom = want;
  }
  if (neighbor->pgsize < 10 * neighbor->oneatom) neighbor->pgsize = 10 * neighbor->oneatom;
}

// pair_coeff names one element per atom type; a wrong order (e.g. "O H" for types H=1, O=2) would
// silently simulate the wrong molecule. Each type's mass must be closest to the mass of the element
// named for it among the elements named in pair_coeff (isotopes such as D and hydrogen mass
// repartitioning keep H closest to H).
void PairSo3krates::check_element_order()
{
  if (!atom->mass || !atom->mass_setflag) return;    // per-atom masses (rmass): nothing to compare
  const int ntypes = atom->ntypes;
  for (int itype = 1; itype <= ntypes; ++itype) {
    if (!atom->mass_setflag[itype]) continue;
    const double m = atom->mass[itype];
    int best = type2z[itype];
    double best_d = std::fabs(m - MASSES[best]);
    for (int jtype = 1; jtype <= ntypes; ++jtype) {
      const int zj = type2z[jtype];
      if (zj > 0 && zj < NMASSES && std::fabs(m - MASSES[zj]) < best_d - 1e-9) {
        best = zj;
        best_d = std::fabs(m - MASSES[zj]);
      }
    }
    if (best != type2z[itype])
      error->all(FLERR,
                 "pair_coeff so3krates: atom type {} has mass {:.3f} amu, which is {} ({:.3f} amu), but "
                 "pair_coeff names {} ({:.3f} amu) for it; list the elements in atom-type order "
                 "(pair_coeff * * model.pt <element of type 1> <element of type 2> ...)",
                 itype, m, z_to_symbol(best), MASSES[best], z_to_symbol(type2z[itype]),
                 MASSES[type2z[itype]]);
  }
}

double PairSo3krates::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  // local atoms: long-range partners too (cutforce); ghosts: message-passing neighbours only
  cutghost[i][j] = cutghost[j][i] = cutoff;
  return graph_cutoff;
}

/* ---------------------------------------------------------------------- */

void PairSo3krates::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  double **x = atom->x;
  double **f = atom->f;
  int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;

  const int inum = list->inum;
  const int gnum = list->gnum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  if (inum != nlocal)
    error->one(FLERR, "pair so3krates: neighbour list covers {} of {} local atoms", inum, nlocal);

  zbuf.resize(nall);
  for (int i = 0; i < nall; ++i) zbuf[i] = type2z[type[i]];

  // edges: every pair within cutoff (all atoms); long-range pairs of local atoms only (the
  // long-range energy of atom i is 1/2 sum_j E_ij over i's partners, summed over owned i)
  const double cutsq_local = cutoff * cutoff;
  const double cutsq_owned = graph_cutoff * graph_cutoff;
  idx_i.clear();
  idx_j.clear();
  for (int ii = 0; ii < inum + gnum; ++ii) {
    const int i = ilist[ii];
    const double cutsq_i = i < nlocal ? cutsq_owned : cutsq_local;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz < cutsq_i) {
        idx_i.push_back(i);
        idx_j.push_back(j);
      }
    }
  }

  // the box (EFA models): rows a = (xprd,0,0), b = (xy,yprd,0), c = (xz,yz,zprd)
  so3krates::Box box;
  const double *h = domain->h;
  box.cell[0] = h[0];
  box.cell[3] = domain->triclinic ? h[5] : 0.0;
  box.cell[4] = h[1];
  box.cell[6] = domain->triclinic ? h[4] : 0.0;
  box.cell[7] = domain->triclinic ? h[3] : 0.0;
  box.cell[8] = h[2];
  box.pbc[0] = domain->xperiodic != 0;
  box.pbc[1] = domain->yperiodic != 0;
  box.pbc[2] = domain->zperiodic != 0;

  MPI_Comm w = world;
  so3krates::Collectives coll;
  coll.allreduce = [w](double *buf, int n) {
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, w);
  };
  coll.allreduce_max = [w](long v) {
    long out = v;
    MPI_Allreduce(&v, &out, 1, MPI_LONG, MPI_MAX, w);
    return out;
  };
  coll.forward = [this](double *buf, int width) {
    xchg_buf = buf;
    xchg_width = width;
    comm->forward_comm(this, width);
    xchg_buf = nullptr;
  };
  coll.reverse = [this](double *buf, int width) {
    xchg_buf = buf;
    xchg_width = width;
    comm->reverse_comm(this, width);
    xchg_buf = nullptr;
  };

  double e_local = 0.0;
  double dEdh[9];
  try {
    e_local = model->compute(nall > 0 ? &x[0][0] : nullptr, nall, nlocal, zbuf, idx_i, idx_j,
                             total_charge, num_unpaired_electrons, box, coll, ebuf, gbuf, dEdh);
  } catch (std::exception &e) {
    error->one(FLERR, std::string("pair so3krates: ") + e.what());
  }

  if (!reported) {
    // work per layer on rank 0 (once): owned + ghost atoms and the atoms each layer updates
    reported = true;
    const auto &cnt = model->layer_counts();
    if (comm->me == 0) {
      std::string layers;
      const int L = static_cast<int>(cnt.size()) - 1;
      for (int k = 0; k < L; ++k) layers += (k ? "/" : "") + std::to_string(cnt[L - 1 - k]);
      if (L > 0)
        utils::logmesg(lmp,
                       "so3krates: rank 0 has {} local + {} ghost atoms; features computed for {} "
                       "atoms, layer updates on {} atoms (layer 1/2/...), final features on {}{}\n",
                       nlocal, nall - nlocal, cnt[L], layers, cnt[0], prune ? "" : " (prune no)");
    }
  }

  const double s = energy_factor;
  double v[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int i = 0; i < nall; ++i) {
    const double fx = -s * gbuf[3 * i], fy = -s * gbuf[3 * i + 1], fz = -s * gbuf[3 * i + 2];
    f[i][0] += fx;
    f[i][1] += fy;
    f[i][2] += fz;
    if (vflag_global || vflag_atom) {
      const double vi[6] = {x[i][0] * fx, x[i][1] * fy, x[i][2] * fz,
                            x[i][0] * fy, x[i][0] * fz, x[i][1] * fz};
      for (int k = 0; k < 6; ++k) v[k] += vi[k];
      if (vflag_atom)
        for (int k = 0; k < 6; ++k) vatom[i][k] += vi[k];
    }
  }
  // explicit box dependence (periodic EFA): W_ab = -sum_k h_ka dE/dh_kb, this rank's share. It is
  // not symmetric by itself; like sum_i x_ia f_ib (whose xy entry LAMMPS takes as x f_y) only the
  // total is (rotation invariance), so the entries ab = xy, xz, yz are taken as they are.
  double vbox[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  bool has_box_term = false;
  for (int k = 0; k < 9; ++k) has_box_term = has_box_term || dEdh[k] != 0.0;
  if (has_box_term) {
    double W[3][3];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) {
        W[a][b] = 0.0;
        for (int k = 0; k < 3; ++k) W[a][b] -= s * box.cell[3 * k + a] * dEdh[3 * k + b];
      }
    vbox[0] = W[0][0];
    vbox[1] = W[1][1];
    vbox[2] = W[2][2];
    vbox[3] = W[0][1];
    vbox[4] = W[0][2];
    vbox[5] = W[1][2];
    if (vflag_atom && nlocal > 0)
      for (int i = 0; i < nlocal; ++i)
        for (int k = 0; k < 6; ++k) vatom[i][k] += vbox[k] / nlocal;
  }
  if (eflag_global) eng_vdwl += s * e_local;
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += s * ebuf[i];
  if (vflag_global)
    for (int k = 0; k < 6; ++k) virial[k] += v[k];
  const bool global_virial = vflag_global || vflag_fdotr;    // fdotr_compute clears vflag_fdotr
  if (vflag_fdotr) virial_fdotr_compute();
  if (global_virial && has_box_term)
    for (int k = 0; k < 6; ++k) virial[k] += vbox[k];
}

/* ----------------------------------------------------------------------
   exchange stages: rows of xchg_buf (xchg_width values per atom, local + ghost order)
------------------------------------------------------------------------- */

int PairSo3krates::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const double *row = xchg_buf + static_cast<size_t>(list[i]) * xchg_width;
    for (int k = 0; k < xchg_width; ++k) buf[m++] = row[k];
  }
  return m;
}

void PairSo3krates::unpack_forward_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; ++i) {
    double *row = xchg_buf + static_cast<size_t>(i) * xchg_width;
    for (int k = 0; k < xchg_width; ++k) row[k] = buf[m++];
  }
}

int PairSo3krates::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  for (int i = first; i < first + n; ++i) {
    const double *row = xchg_buf + static_cast<size_t>(i) * xchg_width;
    for (int k = 0; k < xchg_width; ++k) buf[m++] = row[k];
  }
  return m;
}

void PairSo3krates::unpack_reverse_comm(int n, int *list, double *buf)
{
  int m = 0;
  for (int i = 0; i < n; ++i) {
    double *row = xchg_buf + static_cast<size_t>(list[i]) * xchg_width;
    for (int k = 0; k < xchg_width; ++k) row[k] += buf[m++];
  }
}

double PairSo3krates::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) (zbuf.capacity() + idx_i.capacity() + idx_j.capacity()) * sizeof(int64_t);
  bytes += (double) (ebuf.capacity() + gbuf.capacity()) * sizeof(double);
  return bytes;
}
