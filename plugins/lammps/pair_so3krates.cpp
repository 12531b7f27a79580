/* pair_style so3krates — see pair_so3krates.h for the input syntax.

   Per step, on every MPI rank:
     owned atoms + ghost atoms within max(cutoff, cutoff_lr) + skin (LAMMPS' default ghost shell)
     -> half neighbour list with newton on: every pair with at least one owned atom once over all ranks
     -> pairs within cutoff (message passing, ZBL) and within cutoff_lr (electrostatics, dispersion)
     -> so3krates::Model::compute (so3krates_model.cpp): the model's stages on this rank's atoms, with
        the halo exchanges (pack/unpack_forward_comm, pack/unpack_reverse_comm below) and
        MPI_Allreduce's between them, one autograd backward for the forces
     -> forces on owned and ghost atoms (ghost forces go back to their owners: newton on), the
        energy of this rank, per-atom energies (ghost rows: pair-energy shares, reverse-communicated
        by LAMMPS' per-atom computes) and the virial F·r plus the box term of periodic EFA.
   The result does not depend on the number of ranks (to rounding). */

#include "pair_so3krates.h"

#include "elements.h"
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
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#ifdef __GLIBC__
#include <malloc.h>
#endif

using namespace LAMMPS_NS;
using so3krates::standard_mass;
using so3krates::symbol_to_z;
using so3krates::z_to_symbol;

namespace {
// exported files of format 2 carry the stage protocol of export/exported_model.py
const int SUPPORTED_FORMAT_MAJOR = 3;  // 1: ghost-shell methods; 2: stacked pair rows; 3: column blocks
// atoms closer than this (Å) stop the run: overlapping atoms, a wrong unit or an exploded system
const double MIN_DISTANCE = 0.1;
}    // namespace

PairSo3krates::PairSo3krates(LAMMPS *lmp) :
    Pair(lmp), step(new so3krates::Step), result(new so3krates::Result)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
}

PairSo3krates::~PairSo3krates()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
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
               "pair style so3krates supports 'units metal' (eV, Å) and 'units real' (kcal/mol, Å), not 'units {}'",
               units);
}

/* pair_style so3krates [device cpu|cuda] [threads N] [charge Q] [unpaired_electrons S] [chunk P] */
void PairSo3krates::settings(int narg, char **arg)
{
  check_units();
  for (int iarg = 0; iarg < narg; iarg += 2) {
    std::string key = arg[iarg];
    if (iarg + 1 >= narg) error->all(FLERR, "pair_style so3krates: keyword '{}' needs a value", key);
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
    } else if (key == "chunk") {
      chunk = utils::bnumeric(FLERR, val, false, lmp);
      if (chunk < 1) error->all(FLERR, "pair_style so3krates: chunk must be >= 1 (pairs per call)");
    } else if (key == "malloc") {
      if (val != "keep" && val != "system")
        error->all(FLERR, "pair_style so3krates: malloc must be keep or system, not '{}'", val);
      malloc_keep = val == "keep";
    } else if (key == "prune") {
      error->all(FLERR, "pair_style so3krates: 'prune' is gone: every rank now computes the features of its "
                        "own atoms only (per-layer halo exchange); remove the keyword");
    } else {
      error->all(FLERR,
                 "pair_style so3krates: unknown keyword '{}' (known: device cpu|cuda, threads N, charge Q, "
                 "unpaired_electrons S, chunk P, malloc keep|system)",
                 key);
    }
  }
  if (malloc_keep) keep_freed_memory();
  if (nthreads > 0) {
    try {
      so3krates::Model::set_num_threads(nthreads);
    } catch (std::exception &e) {
      error->all(FLERR, std::string("pair_style so3krates: ") + e.what());
    }
  }
}

// glibc returns the large blocks of a step's tensors to the system when they are freed (mmap/munmap,
// heap trimming), and the next step faults them in again page by page: ~25 % of a step's time went into
// the kernel's page-fault handling on water boxes of 3k-25k atoms (system time; LAMMPS' "% CPU use"
// shows only ~73 %). Keeping freed memory in the process (the Python loader does the same: export/process_memory.py)
// removes it for ~5 % more resident memory. Environment settings MALLOC_*_ win; 'malloc system' keeps
// glibc's defaults.
void PairSo3krates::keep_freed_memory()
{
#ifdef __GLIBC__
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_") ||
      std::getenv("GLIBC_TUNABLES"))
    return;
  const bool ok = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1 &&
      mallopt(M_TOP_PAD, 256 << 20) == 1;
  if (comm->me == 0)
    utils::logmesg(lmp, ok ? "so3krates: malloc keeps freed memory for reuse (mmap threshold 1 GiB, trim threshold "
                             "2 GiB, top pad 256 MiB; 'malloc system' for glibc's defaults)\n"
                           : "so3krates: WARNING: mallopt failed; glibc's malloc defaults stay\n");
#endif
}

/* pair_coeff * * model.pt El1 El2 ... (one element per atom type) */
void PairSo3krates::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 3 + ntypes)
    error->all(FLERR,
               "pair_coeff so3krates: expected 'pair_coeff * * model.pt' followed by {} element symbol(s), one "
               "per atom type, but got {} symbol(s)",
               ntypes, narg - 3 > 0 ? narg - 3 : 0);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff so3krates: the first two arguments must be '* *'");
  load_model(arg[2]);
  check_box();
  map_elements(arg + 3);
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) setflag[i][j] = 1;
  if (comm->me == 0) {
    const auto &lay = model->layout();
    int n_efa = 0;
    for (bool e : lay.efa) n_efa += e;
    utils::logmesg(lmp,
                   "so3krates: model {} | {} layers, cutoff {} A, long-range cutoff {} A | EFA in {} layer(s){} | "
                   "halo exchange of {} values per ghost atom per layer | dtype {} | device {}\n",
                   model_path, lay.num_layers, cutoff, cutoff_lr, n_efa,
                   n_efa ? (domain->xperiodic ? " (periodic)" : " (open)") : "", lay.feature_width, dtype,
                   model->device_string());
  }
}

void PairSo3krates::load_model(const std::string &path)
{
  model_path = path;
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
               "pair_coeff so3krates: '{}' is a TorchScript file or .pt2 package but has no so3krates metadata "
               "(so3krates/metadata.json / so3krates_metadata): not a so3krates export. Export the model with "
               "'so3krates export'",
               model_path);
  read_metadata(meta, model_path);
  try {
    model->set_dtype(dtype);
    model->set_chunk(chunk);
  } catch (std::exception &e) {
    error->all(FLERR, std::string("pair_coeff so3krates: ") + e.what());
  }
  comm_forward = comm_reverse = std::max(model->layout().feature_width, model->layout().exchange_width);
}

void PairSo3krates::read_metadata(const std::string &text, const std::string &path)
{
  json meta;
  try {
    meta = json::parse(text);
  } catch (json::exception &e) {
    error->all(FLERR, "pair_coeff so3krates: '{}' has corrupt so3krates metadata ({}); re-export the model", path,
               e.what());
  }
  auto need = [&](const char *key) -> const json & {
    if (!meta.contains(key))
      error->all(FLERR, "pair_coeff so3krates: '{}' metadata lacks '{}'; re-export the model", path, key);
    return meta[key];
  };
  try {
    const json &fv = need("format_version");
    int major = fv.is_number() ? static_cast<int>(std::floor(fv.get<double>()))
                               : (fv.is_string() ? std::atoi(fv.get<std::string>().c_str()) : 0);
    if (major < SUPPORTED_FORMAT_MAJOR)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' has format_version {}: it was exported for an older engine protocol "
                 "({}); re-export it with this version ('so3krates export CHECKPOINT -o model.pt')",
                 path, fv.dump(), major <= 1 ? "ghost-shell methods" : "pair stages returning stacked [P, 2, w] rows");
    if (major > SUPPORTED_FORMAT_MAJOR)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' has format_version {} but this plugin reads format version {}; "
                 "install the so3krates version that exported it",
                 path, fv.dump(), SUPPORTED_FORMAT_MAJOR);
    cutoff = need("cutoff").get<double>();
    cutoff_lr = meta.contains("cutoff_lr") && meta["cutoff_lr"].is_number() ? meta["cutoff_lr"].get<double>() : 0.0;
    pair_cutoff = std::max(cutoff, cutoff_lr);
    if (!(cutoff > 0.0)) error->all(FLERR, "pair_coeff so3krates: '{}' metadata has cutoff {}", path, cutoff);
    species.clear();
    for (const auto &z : need("species")) species.push_back(z.get<int>());
    if (species.empty()) error->all(FLERR, "pair_coeff so3krates: '{}' metadata lists no species", path);
    dtype = meta.contains("dtype") ? meta["dtype"].get<std::string>() : std::string("float32");
    efa = meta.contains("efa") && meta["efa"].is_boolean() && meta["efa"].get<bool>();
    efa_qk_degrees = meta.contains("efa_qk_degrees") && meta["efa_qk_degrees"].is_number_integer()
                         ? meta["efa_qk_degrees"].get<int>() : 0;
    if (meta.contains("units") && meta["units"].is_object()) {
      const json &u = meta["units"];
      auto is = [&](const char *k, std::initializer_list<const char *> ok) {
        if (!u.contains(k) || !u[k].is_string()) return true;
        std::string v = u[k].get<std::string>();
        for (const char *o : ok)
          if (v == o) return true;
        return false;
      };
      if (!is("length", {"Å", "A", "Angstrom", "angstrom", "\xc3\x85"}) || !is("energy", {"eV", "ev"}))
        error->all(FLERR, "pair_coeff so3krates: '{}' uses units {} (expected Å and eV)", path, u.dump());
    }
  } catch (json::exception &e) {
    error->all(FLERR, "pair_coeff so3krates: '{}' has corrupt so3krates metadata ({}); re-export the model", path,
               e.what());
  }
}

void PairSo3krates::map_elements(char **symbols)
{
  std::string known;
  for (int z : species) known += (known.empty() ? "" : " ") + z_to_symbol(z);
  type2z.assign(atom->ntypes + 1, 0);
  for (int itype = 1; itype <= atom->ntypes; ++itype) {
    std::string sym = symbols[itype - 1];
    int z = symbol_to_z(sym);
    if (z == 0)
      error->all(FLERR,
                 "pair_coeff so3krates: '{}' (atom type {}) is not an element symbol; give one element per atom "
                 "type, e.g. H C N O",
                 sym, itype);
    if (std::find(species.begin(), species.end(), z) == species.end())
      error->all(FLERR, "pair_coeff so3krates: element {} (atom type {}) is not in the model '{}'; the model knows: {}",
                 sym, itype, model_path, known);
    type2z[itype] = z;
  }
}

// EFA models see the box: fully periodic boxes use the reciprocal-lattice EFA with the LAMMPS box
// matrix, fully non-periodic ones (boundary f f f / s s s / m m m) the open (Lebedev) variant.
void PairSo3krates::check_box()
{
  if (!efa) return;
  const int np = domain->xperiodic + domain->yperiodic + domain->zperiodic;
  if (np != 0 && np != 3)
    error->all(FLERR,
               "pair so3krates: '{}' uses Euclidean fast attention (EFA), which needs a fully periodic box "
               "(boundary p p p: reciprocal-lattice EFA) or a fully non-periodic one (boundary f f f: open EFA), "
               "not boundary {} {} {}; for a slab or wire use 'boundary p p p' with a vacuum gap",
               model_path, domain->xperiodic ? "p" : "f", domain->yperiodic ? "p" : "f", domain->zperiodic ? "p" : "f");
  if (np == 3 && efa_qk_degrees > 0)
    error->all(FLERR,
               "pair so3krates: '{}' has direction-dependent EFA queries/keys (efa_qk_degrees = {}), which are "
               "defined for open systems only (boundary f f f); use a model trained with efa_qk_degrees: 0 for "
               "periodic boxes",
               model_path, efa_qk_degrees);
}

void PairSo3krates::init_style()
{
  if (!model) error->all(FLERR, "pair so3krates: pair_coeff * * model.pt ... was not given");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair style so3krates requires newton pair on (each pair is held by one rank; forces and "
               "features of ghost atoms go back to their owners); remove 'newton off' or use 'newton on'");
  check_units();
  if (comm->mode != Comm::SINGLE) error->all(FLERR, "pair style so3krates needs comm_modify mode single");
  if (atom->molecular != Atom::ATOMIC)
    for (int k = 1; k < 4; ++k)
      if (force->special_lj[k] != 1.0 || force->special_coul[k] != 1.0)
        error->all(FLERR,
                   "pair style so3krates needs every pair of bonded atoms in the neighbour list: add "
                   "'special_bonds lj/coul 1.0 1.0 1.0' (the model sees bonds through the geometry itself)");
  neighbor->add_request(this);    // half list; with newton on every pair is held by exactly one rank
  const double ghost = pair_cutoff + neighbor->skin;
  if (comm->style != Comm::BRICK) {
    const double *prd = domain->prd;
    for (int d = 0; d < 3; ++d)
      if (domain->periodicity[d] && ghost > prd[d])
        error->all(FLERR,
                   "pair style so3krates: box length {} along {} is smaller than the ghost shell {} A (cutoff + "
                   "skin), which comm_style tiled cannot provide; use comm_style brick or a larger box",
                   prd[d], "xyz"[d], ghost);
  }
  check_element_order();
  check_box();
  raise_neighbor_limits();
}

// With SO3LR's 12 Å long-range cutoff an atom in water has ~600 neighbours in a half list plus
// skin, close to LAMMPS' default 'neigh_modify one 2000'. Raise 'one' (and 'page') to twice the
// count expected at the system's mean density, unless the input set more.
void PairSo3krates::raise_neighbor_limits()
{
  const double vol = domain->xprd * domain->yprd * domain->zprd;
  if (!(vol > 0.0) || atom->natoms <= 0) return;
  const double density = std::min(static_cast<double>(atom->natoms) / vol, 0.3);    // atoms/Å^3
  const double r = pair_cutoff + neighbor->skin;
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
    int best = static_cast<int>(type2z[itype]);
    double best_d = std::fabs(m - standard_mass(best));
    for (int jtype = 1; jtype <= ntypes; ++jtype) {
      const int zj = static_cast<int>(type2z[jtype]);
      if (zj > 0 && std::fabs(m - standard_mass(zj)) < best_d - 1e-9) {
        best = zj;
        best_d = std::fabs(m - standard_mass(zj));
      }
    }
    if (best != type2z[itype])
      error->all(FLERR,
                 "pair_coeff so3krates: atom type {} has mass {:.3f} amu, which is {} ({:.3f} amu), but pair_coeff "
                 "names {} ({:.3f} amu) for it; list the elements in atom-type order (pair_coeff * * model.pt "
                 "<element of type 1> <element of type 2> ...)",
                 itype, m, z_to_symbol(best), standard_mass(best), z_to_symbol(static_cast<int>(type2z[itype])),
                 standard_mass(static_cast<int>(type2z[itype])));
  }
}

double PairSo3krates::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  return pair_cutoff;
}

/* ---------------------------------------------------------------------- */

// Pairs of the half list within the model cutoff and the long-range cutoff (each pair once).
void PairSo3krates::build_pairs(so3krates::Step &s)
{
  double **x = atom->x;
  const double cut2 = cutoff * cutoff, cut2_lr = cutoff_lr * cutoff_lr, min2 = MIN_DISTANCE * MIN_DISTANCE;
  s.pair_i.clear();
  s.pair_j.clear();
  s.lr_i.clear();
  s.lr_j.clear();
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double r2 = dx * dx + dy * dy + dz * dz;
      if (r2 < min2)
        error->one(FLERR,
                   "pair so3krates: atoms {} and {} are {:.4f} A apart, closer than {} A: overlapping atoms, a wrong "
                   "length unit (Å expected) or an exploded simulation (smaller time step, minimise first)",
                   atom->tag[i], atom->tag[j], std::sqrt(r2), MIN_DISTANCE);
      if (r2 < cut2) {
        s.pair_i.push_back(i);
        s.pair_j.push_back(j);
      }
      if (r2 < cut2_lr) {
        s.lr_i.push_back(i);
        s.lr_j.push_back(j);
      }
    }
  }
}

// Ghost atoms that are periodic images of atoms this rank owns (same tag): their owner's index.
void PairSo3krates::find_owners(so3krates::Step &s)
{
  s.owner.clear();
  if (!atom->tag_enable) return;
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  owned_by_tag.clear();
  owned_by_tag.reserve(static_cast<size_t>(nlocal));
  for (int i = 0; i < nlocal; ++i) owned_by_tag.emplace(atom->tag[i], i);
  s.owner.assign(static_cast<size_t>(nall), -1);
  for (int i = 0; i < nlocal; ++i) s.owner[i] = i;
  for (int i = nlocal; i < nall; ++i) {
    auto it = owned_by_tag.find(atom->tag[i]);
    if (it != owned_by_tag.end()) s.owner[i] = it->second;
  }
}

void PairSo3krates::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  if (list->inum != nlocal)
    error->one(FLERR, "pair so3krates: neighbour list covers {} of {} local atoms", list->inum, nlocal);

  so3krates::Step &s = *step;
  s.x = nall > 0 ? &atom->x[0][0] : nullptr;
  s.ntot = nall;
  s.nlocal = nlocal;
  s.z.resize(nall);
  for (int i = 0; i < nall; ++i) s.z[i] = type2z[atom->type[i]];
  s.total_charge = total_charge;
  s.num_unpaired_electrons = num_unpaired_electrons;
  build_pairs(s);
  find_owners(s);
  // the box (EFA models): rows a = (xprd,0,0), b = (xy,yprd,0), c = (xz,yz,zprd)
  const double *h = domain->h;
  const double cell[9] = {h[0], 0.0, 0.0, domain->triclinic ? h[5] : 0.0, h[1], 0.0,
                          domain->triclinic ? h[4] : 0.0, domain->triclinic ? h[3] : 0.0, h[2]};
  std::copy(cell, cell + 9, s.box.cell);
  s.box.pbc[0] = domain->xperiodic != 0;
  s.box.pbc[1] = domain->yperiodic != 0;
  s.box.pbc[2] = domain->zperiodic != 0;

  MPI_Comm w = world;
  so3krates::Collectives coll;
  coll.allreduce = [w](double *buf, int n) {
    if (n > 0) MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, w);
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
  try {
    model->compute(s, coll, *result);
  } catch (std::exception &e) {
    error->one(FLERR, std::string("pair so3krates: ") + e.what());
  }
  if (!reported) report(*result, nlocal, nall);
  apply_result(*result, nall);
}

// Forces, energies and virials from the model's result (this rank's share).
void PairSo3krates::apply_result(const so3krates::Result &res, int nall)
{
  double **x = atom->x;
  double **f = atom->f;
  const double sf = energy_factor;
  const int nlocal = atom->nlocal;
  for (int i = 0; i < nall; ++i) {
    const double fx = -sf * res.dEdx[3 * i], fy = -sf * res.dEdx[3 * i + 1], fz = -sf * res.dEdx[3 * i + 2];
    f[i][0] += fx;
    f[i][1] += fy;
    f[i][2] += fz;
    if (vflag_global && !vflag_fdotr) {
      virial[0] += x[i][0] * fx;
      virial[1] += x[i][1] * fy;
      virial[2] += x[i][2] * fz;
      virial[3] += x[i][0] * fy;
      virial[4] += x[i][0] * fz;
      virial[5] += x[i][1] * fz;
    }
    if (vflag_atom) {
      const double vi[6] = {x[i][0] * fx, x[i][1] * fy, x[i][2] * fz, x[i][0] * fy, x[i][0] * fz, x[i][1] * fz};
      for (int k = 0; k < 6; ++k) vatom[i][k] += vi[k];
    }
    if (eflag_atom) eatom[i] += sf * res.atomic_energies[i];
  }
  if (eflag_global) eng_vdwl += sf * res.energy;
  const bool global_virial = vflag_global || vflag_fdotr;
  if (vflag_fdotr) virial_fdotr_compute();
  // explicit box dependence (periodic EFA): W_ab = -sum_k h_ka dE/dh_kb, this rank's share. It is not
  // symmetric by itself; like sum_i x_ia f_ib (whose xy entry LAMMPS takes as x f_y) only the total is
  // (rotation invariance), so the entries ab = xy, xz, yz are taken as they are.
  bool has_box_term = false;
  for (int k = 0; k < 9; ++k) has_box_term = has_box_term || res.dEdcell[k] != 0.0;
  if (!has_box_term) return;
  const double *cell = step->box.cell;
  double W[3][3];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) {
      W[a][b] = 0.0;
      for (int k = 0; k < 3; ++k) W[a][b] -= sf * cell[3 * k + a] * res.dEdcell[3 * k + b];
    }
  const double vbox[6] = {W[0][0], W[1][1], W[2][2], W[0][1], W[0][2], W[1][2]};
  if (global_virial)
    for (int k = 0; k < 6; ++k) virial[k] += vbox[k];
  if (vflag_atom && nlocal > 0)
    for (int i = 0; i < nlocal; ++i)
      for (int k = 0; k < 6; ++k) vatom[i][k] += vbox[k] / nlocal;
}

// Once: what the decomposition costs (rank 0 and the largest values over all ranks).
void PairSo3krates::report(const so3krates::Result &res, int nlocal, int nall)
{
  reported = true;
  double mine[3] = {static_cast<double>(nall - nlocal) / std::max(1, nlocal),
                    static_cast<double>(res.rows_projected) / std::max(1, nlocal), static_cast<double>(nall)};
  double most[3];
  MPI_Allreduce(mine, most, 3, MPI_DOUBLE, MPI_MAX, world);
  if (comm->me != 0) return;
  utils::logmesg(lmp,
                 "so3krates: ghost cutoff {} A (cutoff {} A + skin {} A) | rank 0: {} local + {} ghost atoms | "
                 "features computed for the local atoms only (1.00 per local atom); layer inputs projected for {} "
                 "atoms ({:.2f} per local atom, at most {:.2f} on any rank) | per layer {} values per ghost atom "
                 "exchanged forward and {} back | ghost atoms per local atom: {:.2f} here, at most {:.2f}\n",
                 pair_cutoff + neighbor->skin, pair_cutoff, neighbor->skin, nlocal, nall - nlocal,
                 res.rows_projected, mine[1], most[1], model->layout().feature_width,
                 model->layout().feature_width, mine[0], most[0]);
}

/* ----------------------------------------------------------------------
   halo exchange: rows of xchg_buf (xchg_width values per atom, local + ghost order)
------------------------------------------------------------------------- */

int PairSo3krates::pack_forward_comm(int n, int *list_, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const double *row = xchg_buf + static_cast<size_t>(list_[i]) * xchg_width;
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

void PairSo3krates::unpack_reverse_comm(int n, int *list_, double *buf)
{
  int m = 0;
  for (int i = 0; i < n; ++i) {
    double *row = xchg_buf + static_cast<size_t>(list_[i]) * xchg_width;
    for (int k = 0; k < xchg_width; ++k) row[k] += buf[m++];
  }
}

double PairSo3krates::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(step->z.capacity() + step->pair_i.capacity() + step->pair_j.capacity() +
                               step->lr_i.capacity() + step->lr_j.capacity()) * sizeof(int64_t);
  bytes += static_cast<double>(result->atomic_energies.capacity() + result->dEdx.capacity()) * sizeof(double);
  return bytes;
}
