// Small formatting helpers for log and error messages of the native core.
#pragma once

#include <cinttypes>
#include <cstddef>
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

// Bytes a peer sent, for a message, in double quotes: printable ASCII as is, the rest escaped as in C (\r, \n,
// \t, \", \\, \xNN): GET / HTTP/1.1 and CR LF read "GET / HTTP/1.1\r\n".
inline std::string quoted_bytes(const uint8_t* bytes, size_t len) {
  std::string out = "\"";
  for (size_t i = 0; i < len; i++) {
    const uint8_t c = bytes[i];
    char escaped[8];
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '"' || c == '\\') (out += '\\') += static_cast<char>(c);
    else if (c >= 0x20 && c < 0x7f) out += static_cast<char>(c);
    else {
      snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
    }
  }
  return out + "\"";
}

// "47 45 54 20": the same bytes in hex.
inline std::string hex_bytes(const uint8_t* bytes, size_t len) {
  std::string out;
  for (size_t i = 0; i < len; i++) {
    char two[4];
    snprintf(two, sizeof two, "%02x", bytes[i]);
    if (i) out += ' ';
    out += two;
  }
  return out;
}

}  // namespace lazyd
