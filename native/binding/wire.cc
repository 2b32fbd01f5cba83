#include "binding/convert.h"
#include "binding/exports.h"
#include "wire/wire.h"

namespace lazyd::binding {

// constants: every wire constant by name (native/core/wire/wire.h).
Napi::Object wire_constants(Napi::Env env) {
  Napi::Object constants = Napi::Object::New(env);
  for (size_t i = 0; i < lazyd::wire::kConstantCount; i++) {
    constants.Set(lazyd::wire::kConstants[i].name, uint64_value(env, lazyd::wire::kConstants[i].value));
  }
  return constants;
}

// detectFormat(bytes: Uint8Array, pageSize) -> 24 | 32 | 0: wire.cc detect(), for the property test that
// checks the TypeScript twin (test/harness/wire.ts detectFormat) agrees with it.
Napi::Value detect_format(const Napi::CallbackInfo& info) {
  Napi::Uint8Array bytes = info[0].As<Napi::Uint8Array>();
  const size_t page_size = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());
  return Napi::Number::New(info.Env(), static_cast<int>(lazyd::wire::detect(bytes.Data(), bytes.ByteLength(), page_size)));
}

}  // namespace lazyd::binding
