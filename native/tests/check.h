// The native tests' one assertion: CHECK(cond) stops the test at the first failure, naming file and line; the
// test ends with check_report(), whose "N passed, 0 failed" line is what CI reads.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>

// Atomic: fake peers in test threads CHECK too.
inline std::atomic<int> check_passed{0};

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::printf("%d passed, 1 failed\n", check_passed.load());                           \
      std::exit(1);                                                                  \
    }                                                                                \
    check_passed++;                                                                  \
  } while (0)

inline int check_report() {
  std::printf("%d passed, 0 failed\n", check_passed.load());
  return 0;
}
