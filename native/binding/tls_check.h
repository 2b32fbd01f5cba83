// The `tls` option of PageServer and LazyPages, and tlsCheck().
#pragma once

#include <napi.h>

#include <memory>

#include "net/tls_context.h"

namespace lazyd::binding {

// undefined (plain TCP) or { cacert, cacrl, cert, key, noCnVerify, peerName } (empty strings: criu's defaults,
// docs/protocol.md §1.9). Loads the credentials; a bad file throws its one-line message.
std::shared_ptr<const TlsContext> tls_option(Napi::Env env, Napi::Value value);

}  // namespace lazyd::binding
