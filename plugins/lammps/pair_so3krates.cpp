/* pair_style so3krates — see pair_so3krates.h for the input syntax.

   Data flow per step (on every MPI rank):
     local + ghost atoms (ghost shell = receptive_field + skin, so every local atom's
     L-layer neighbourhood is complete), full neighbour list incl. neighbours of ghosts
     -> edges i->j with |x_j - x_i| < max(cutoff, cutoff_lr) for all i (local and ghost)
     -> model.atomic_energies_from_edges(...) [Ntot], E_rank = sum of the first nlocal
     -> autograd dE/dx on local and ghost atoms; forces on ghosts are reverse-communicated by
        LAMMPS (newton on), so the result does not depend on the number of ranks.
   Global terms (metadata num_globals > 0) are reduced over MPI: see so3krates_model.cpp.
   Virial: F.r (virial_fdotr_compute) or, when LAMMPS asks for it explicitly, the same sum
   x_i (x) f_i over local + ghost atoms of this style's own forces; per-atom virial is the
   per-atom term x_i (x) f_i (sums to the global virial; not unique for many-body models). */

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
    } else {
      error->all(FLERR,
                 "pair_style so3krates: unknown keyword '{}' (known: device cpu|cuda, "
                 "threads N, charge Q, unpaired_electrons S)",
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
  } catch (std::exception &e) {
    error->all(FLERR, std::string("pair_coeff so3krates: ") + e.what());
  }
  if (!has_energies)
    error->all(FLERR,
               "pair_coeff so3krates: '{}' lacks the method atomic_energies_from_edges that "
               "LAMMPS needs; re-export it with this version of so3krates",
               model_path);
  if (num_globals > 0 && !has_partials)
    error->all(FLERR,
               "pair_coeff so3krates: '{}' declares num_globals = {} but lacks the method "
               "global_partials; re-export it",
               model_path, num_globals);
  try {
    model->set_dtype(dtype);
  } catch (std::exception &e) {
    error->all(FLERR, std::string("pair_coeff so3krates: ") + e.what());
  }
  model->set_num_globals(num_globals);

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

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "so3krates: model {} | elements {} | cutoff {} A | long-range cutoff {} A | "
                   "receptive field {} A | num_globals {} | dtype {} | device {}\n",
                   model_path, known, cutoff, cutoff_lr, receptive_field, num_globals, dtype,
                   model->device_string());
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
    // EFA (global attention) sees every atom; through LAMMPS it is exact only when the file
    // expresses it with global sums (num_globals > 0), otherwise only the ghost shell is seen.
    if (meta.contains("efa") && meta["efa"].is_boolean() && meta["efa"].get<bool>() &&
        num_globals == 0 && comm->me == 0)
      error->warning(FLERR,
                     "pair so3krates: '{}' uses Euclidean fast attention but exposes no global "
                     "sums (num_globals = 0): its attention only sees atoms within the ghost shell "
                     "of {} A, so results depend on the box and the domain decomposition",
                     path, receptive_field);
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
  // layers (receptive field = L x cutoff) must be present, plus the neighbour skin.
  double ghost = receptive_field + neighbor->skin;
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
                   "{} A (receptive field + skin) which comm_style tiled cannot provide; use "
                   "comm_style brick or a larger box",
                   prd[d], "xyz"[d], ghost);
  }

  check_element_order();
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
  cutghost[i][j] = cutghost[j][i] = graph_cutoff;
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

  const double cutsq_model = graph_cutoff * graph_cutoff;
  idx_i.clear();
  idx_j.clear();
  for (int ii = 0; ii < inum + gnum; ++ii) {
    const int i = ilist[ii];
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      if (dx * dx + dy * dy + dz * dz < cutsq_model) {
        idx_i.push_back(i);
        idx_j.push_back(j);
      }
    }
  }

  MPI_Comm w = world;
  so3krates::AllreduceSum allreduce = [w](double *buf, int n) {
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, w);
  };

  double e_local = 0.0;
  try {
    e_local = model->compute(nall > 0 ? &x[0][0] : nullptr, nall, nlocal, zbuf, idx_i, idx_j,
                             total_charge, num_unpaired_electrons, allreduce, ebuf, gbuf);
  } catch (std::exception &e) {
    error->one(FLERR, std::string("pair so3krates: ") + e.what());
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
  if (eflag_global) eng_vdwl += s * e_local;
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += s * ebuf[i];
  if (vflag_global)
    for (int k = 0; k < 6; ++k) virial[k] += v[k];
  if (vflag_fdotr) virial_fdotr_compute();
}

double PairSo3krates::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) (zbuf.capacity() + idx_i.capacity() + idx_j.capacity()) * sizeof(int64_t);
  bytes += (double) (ebuf.capacity() + gbuf.capacity()) * sizeof(double);
  return bytes;
}
