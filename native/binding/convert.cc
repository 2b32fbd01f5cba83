#include "binding/convert.h"

#include <cerrno>
#include <cstring>

namespace lazyd::binding {

Napi::Error errno_error(Napi::Env env, int negative_errno, const std::string& what) {
  const int err = -negative_errno;
  Napi::Error error = Napi::Error::New(env, what + ": " + strerror(err));
  const char* code = "EUNKNOWN";
  switch (err) {
    case EADDRINUSE: code = "EADDRINUSE"; break;
    case EADDRNOTAVAIL: code = "EADDRNOTAVAIL"; break;
    case EACCES: code = "EACCES"; break;
    case EPERM: code = "EPERM"; break;
    case EINVAL: code = "EINVAL"; break;
    case ENOENT: code = "ENOENT"; break;
    case EEXIST: code = "EEXIST"; break;
    case EMFILE: code = "EMFILE"; break;
    case ECONNREFUSED: code = "ECONNREFUSED"; break;
  }
  error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  return error;
}

Napi::Value uint64_value(Napi::Env env, uint64_t value) {
  return value <= (1ull << 53) ? Napi::Value(Napi::Number::New(env, static_cast<double>(value)))
                               : Napi::Value(Napi::BigInt::New(env, value));
}

}  // namespace lazyd::binding
