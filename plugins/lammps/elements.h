/* Element symbols and standard atomic weights for pair_coeff checks (no LAMMPS or torch headers). */
#ifndef SO3KRATES_ELEMENTS_H
#define SO3KRATES_ELEMENTS_H

#include <string>

namespace so3krates {

// atomic number of an element symbol ("H", "He", ...), 0 if it is none
int symbol_to_z(const std::string &symbol);
// element symbol of an atomic number ("Z=<z>" outside 1..118)
std::string z_to_symbol(int z);
// standard atomic weight in amu (IUPAC values as tabulated in ASE), 0 outside 1..118
double standard_mass(int z);

}    // namespace so3krates

#endif
