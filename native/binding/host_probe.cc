#include "binding/convert.h"
#include "binding/exports.h"
#include "kernel/host_probe.h"

namespace lazyd::binding {

// probeHost(): { uffd: { syscallErrno, deviceErrno, apiErrno, features, noncoopErrno, noncoopFeatures },
//   memfdErrno } for `lazyd check` (errno 0: it worked).
Napi::Value probe_host(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const lazyd::UffdProbe p = lazyd::probe_userfaultfd();
  Napi::Object uffd = Napi::Object::New(env);
  uffd.Set("syscallErrno", p.syscall_errno);
  uffd.Set("deviceErrno", p.device_errno);
  uffd.Set("apiErrno", p.api_errno);
  uffd.Set("features", uint64_value(env, p.features));
  uffd.Set("noncoopErrno", p.noncoop_errno);
  uffd.Set("noncoopFeatures", uint64_value(env, p.noncoop_features));
  Napi::Object out = Napi::Object::New(env);
  out.Set("uffd", uffd);
  out.Set("memfdErrno", -lazyd::probe_sealed_memfd());
  return out;
}

}  // namespace lazyd::binding
