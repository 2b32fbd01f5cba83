// The addon's module: wraps the C++ core (native/core) for the TypeScript control plane, one file per wrapped
// class or function (exports.h). Nothing here is on a hot path: the core runs its own threads, and events reach
// JavaScript through thread-safe functions that never block the core (non-blocking calls into an unbounded queue).
#include <unistd.h>

#include "binding/exports.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace lazyd::binding;
  exports.Set("PageServer", define_page_server(env));
  exports.Set("LazyPages", define_lazy_pages(env));
  exports.Set("constants", wire_constants(env));
  exports.Set("notify", Napi::Function::New(env, notify, "notify"));
  exports.Set("probeHost", Napi::Function::New(env, probe_host, "probeHost"));
  exports.Set("tcpListening", Napi::Function::New(env, tcp_listening, "tcpListening"));
  exports.Set("tlsCheck", Napi::Function::New(env, tls_check, "tlsCheck"));
  exports.Set("detectFormat", Napi::Function::New(env, detect_format));
  exports.Set("hashPages", Napi::Function::New(env, hash_pages, "hashPages"));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

}  // namespace

NODE_API_MODULE(lazyd_native, Init)
