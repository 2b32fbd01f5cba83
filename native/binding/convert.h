// What every wrapper of the addon shares: core values as JavaScript values, and -errno as an Error with the
// `code` and `errno` properties the control plane switches on.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace lazyd::binding {

// Error("<what>: <strerror>") with code ("EADDRINUSE", ..., "EUNKNOWN") and errno (positive).
Napi::Error errno_error(Napi::Env env, int negative_errno, const std::string& what);

// A Number up to 2^53, a BigInt above.
Napi::Value uint64_value(Napi::Env env, uint64_t value);

}  // namespace lazyd::binding
