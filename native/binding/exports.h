// What module.cc exports, one entry per file of native/binding/.
#pragma once

#include <napi.h>

namespace lazyd::binding {

Napi::Function define_page_server(Napi::Env env);        // page_server.cc (+ staging.cc): class PageServer
Napi::Function define_lazy_pages(Napi::Env env);         // lazy_pages.cc: class LazyPages
Napi::Value tls_check(const Napi::CallbackInfo& info);   // tls_check.cc: tlsCheck(options)
Napi::Value notify(const Napi::CallbackInfo& info);      // sd_notify.cc: notify(socketPath, text)
Napi::Value probe_host(const Napi::CallbackInfo& info);  // host_probe.cc: probeHost()
Napi::Value tcp_listening(const Napi::CallbackInfo& info);  // listen_probe.cc: tcpListening(port)
Napi::Object wire_constants(Napi::Env env);              // wire.cc: constants
Napi::Value detect_format(const Napi::CallbackInfo& info);  // wire.cc: detectFormat(bytes, pageSize)
Napi::Value hash_pages(const Napi::CallbackInfo& info);     // page_hashes.cc: hashPages(path, pageSize)

}  // namespace lazyd::binding
