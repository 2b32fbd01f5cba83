// The fuzz targets' invariant check: a broken invariant traps, so libFuzzer keeps the input as a crash.
#pragma once

#include <cstdio>

#define FUZZ_CHECK(cond)                                                           \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      __builtin_trap();                                                            \
    }                                                                              \
  } while (0)
