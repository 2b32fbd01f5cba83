// What every wrapper of the addon shares: core values as JavaScript values, and -errno as an Error with the
// `code` and `errno` properties the control plane switches on.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace lazyd::binding {

// Error("<what>: <strerror>") with code ("EADDRINUSE", ..., "EUNKNOWN") and errno (positive).
Napi::Error errno_error(Napi::Env env, int negative_errno, const std::string& what);

// The options that lazyd's flags set have no default in the binding (they live in src/config/flags.ts): a missing
// or mistyped one is a TypeError naming it (owner: "PageServer", "LazyPages").
Napi::Value required_option(Napi::Env env, Napi::Object options, const char* owner, const char* name);
double required_number(Napi::Env env, Napi::Object options, const char* owner, const char* name);
bool required_boolean(Napi::Env env, Napi::Object options, const char* owner, const char* name);

// A Number up to 2^53, a BigInt above.
Napi::Value uint64_value(Napi::Env env, uint64_t value);

}  // namespace lazyd::binding
