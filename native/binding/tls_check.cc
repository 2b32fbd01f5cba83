#include "binding/tls_check.h"

#include <string>

#include "binding/exports.h"

namespace lazyd::binding {

std::shared_ptr<const lazyd::TlsContext> tls_option(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object o = value.As<Napi::Object>();
  auto text = [&](const char* name) {
    Napi::Value v = o.Get(name);
    return v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  };
  lazyd::TlsOptions options;
  options.cacert = text("cacert");
  options.cacrl = text("cacrl");
  options.cert = text("cert");
  options.key = text("key");
  options.peer_name = text("peerName");
  options.no_cn_verify = o.Get("noCnVerify").ToBoolean();
  std::string error;
  std::shared_ptr<lazyd::TlsContext> context = lazyd::TlsContext::create(options, &error);
  if (!context) throw Napi::Error::New(env, error);
  return context;
}

// tlsCheck(options): loads the credentials as the daemons will; returns the notes for the log ("" if none).
Napi::Value tls_check(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<const lazyd::TlsContext> context = tls_option(env, info[0]);
  if (!context) throw Napi::Error::New(env, "tlsCheck: expected an options object");
  return Napi::String::New(env, context->notes());
}

}  // namespace lazyd::binding
