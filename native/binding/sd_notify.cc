#include <string>

#include "binding/convert.h"
#include "binding/exports.h"
#include "kernel/sd_notify.h"

namespace lazyd::binding {

// notify(socketPath, text): one sd_notify datagram (systemd Type=notify readiness and STATUS=).
Napi::Value notify(const Napi::CallbackInfo& info) {
  const std::string path = info[0].As<Napi::String>();
  const std::string text = info[1].As<Napi::String>();
  const int rc = lazyd::sd_notify_send(path, text);
  if (rc < 0) throw errno_error(info.Env(), rc, "cannot notify " + path);
  return info.Env().Undefined();
}

}  // namespace lazyd::binding
