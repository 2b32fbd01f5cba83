// Small formatting helpers for log and error messages of the native core.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

namespace lazyd {

// "0x7ffff7cbd000": addresses and raw commands in messages.
inline std::string hex(uint64_t value) {
  char text[24];
  snprintf(text, sizeof text, "0x%" PRIx64, value);
  return text;
}

}  // namespace lazyd
