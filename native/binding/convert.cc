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

Napi::Value required_option(Napi::Env env, Napi::Object options, const char* owner, const char* name) {
  if (!options.Has(name)) throw Napi::TypeError::New(env, std::string(owner) + ": option " + name + " is required");
  return options.Get(name);
}

double required_number(Napi::Env env, Napi::Object options, const char* owner, const char* name) {
  Napi::Value value = required_option(env, options, owner, name);
  if (!value.IsNumber()) throw Napi::TypeError::New(env, std::string(owner) + ": option " + name + " must be a number");
  return value.As<Napi::Number>().DoubleValue();
}

bool required_boolean(Napi::Env env, Napi::Object options, const char* owner, const char* name) {
  Napi::Value value = required_option(env, options, owner, name);
  if (!value.IsBoolean()) throw Napi::TypeError::New(env, std::string(owner) + ": option " + name + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

Napi::Value uint64_value(Napi::Env env, uint64_t value) {
  return value <= (1ull << 53) ? Napi::Value(Napi::Number::New(env, static_cast<double>(value)))
                               : Napi::Value(Napi::BigInt::New(env, value));
}

}  // namespace lazyd::binding
