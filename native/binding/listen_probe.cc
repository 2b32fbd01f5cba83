#include "binding/exports.h"
#include "net/listen_probe.h"

namespace lazyd::binding {

// tcpListening(port): [{ address, port }] of the TCP sockets that LISTEN on port in this network namespace;
// throws with the errno's text when the kernel cannot be asked.
Napi::Value tcp_listening(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t port = info[0].As<Napi::Number>().Uint32Value();
  std::vector<lazyd::net::ListenSocket> sockets;
  const int rc = lazyd::net::tcp_listening(static_cast<uint16_t>(port), &sockets);
  if (rc < 0) throw Napi::Error::New(env, std::string("sock_diag: ") + strerror(-rc));
  Napi::Array out = Napi::Array::New(env, sockets.size());
  for (size_t i = 0; i < sockets.size(); i++) {
    Napi::Object s = Napi::Object::New(env);
    s.Set("address", sockets[i].address);
    s.Set("port", sockets[i].port);
    out.Set(static_cast<uint32_t>(i), s);
  }
  return out;
}

}  // namespace lazyd::binding
