// Checks on id arrays shared by the memory-bank kernels.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyneg {

// Throws std::invalid_argument naming `name` when an id is negative. Branch-free
// min over the array (vectorises), so it costs far less than the work it guards.
inline void check_non_negative_ids(const int64_t* ids, int64_t n, const char* name) {
  int64_t lo = 0;
  for (int64_t i = 0; i < n; ++i) lo = ids[i] < lo ? ids[i] : lo;
  if (lo < 0) {
    throw std::invalid_argument(std::string(name) + " holds negative id " + std::to_string(lo) +
                                " (ids must be >= 0)");
  }
}

}  // namespace pyneg
