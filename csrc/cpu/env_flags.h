// Environment switches of the CPU kernels (MEDMIX_DISABLE_F16C, MEDMIX_DISABLE_FLAT_ROWS): a
// variable is on when set to anything but empty or "0". Callers read it once per process, so
// tests compare a fast path with its fallback by running two processes.
#pragma once

#include <cstdlib>

namespace medmix {

inline bool env_flag_on(const char* name) {
  const char* v = std::getenv(name);
  return v && v[0] && v[0] != '0';
}

}  // namespace medmix
