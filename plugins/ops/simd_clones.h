// SO3K_CLONES: compile a function twice, for AVX2 + FMA (x86-64-v3) and for the baseline instruction set,
// and pick the copy when the library loads (GCC function multi-versioning). The kernels' loops are
// vectorised by the compiler, so this doubles their vector width where the CPU allows it, while the
// library still runs on any x86-64 CPU. Other compilers and CPUs get one baseline copy.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define SO3K_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SO3K_CLONES
#endif
