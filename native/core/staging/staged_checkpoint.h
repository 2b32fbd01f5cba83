// What a lazy session sees of staging: a staged checkpoint, and the lookup from a GET's pid to the checkpoint
// that serves it (implemented by the StagingRegistry, staging_registry.h).
#pragma once

#include <cstdint>
#include <memory>

#include "staging/page_store.h"
#include "wire/link_ext.h"

namespace lazyd {

// A checkpoint staged by an upload (`criu dump --page-server` into lazyd) or a relay (`criu dump --lazy-pages`
// pulled by lazyd): its store (sealed, or a relay's being filled), served until a policy releases it. Sessions
// that fetch from it hold a reference, so a release never cuts a restore short.
struct StagedCheckpoint {
  uint64_t id = 0;  // the upload session's id, or the relay's checkpoint id
  std::shared_ptr<const PageStore> store;
  // The link token (docs/protocol.md §7) written into the checkpoint's lazyd-link.json (an upload's and a relay's
  // alike); a session that sends HELLO with it is bound to this checkpoint alone. has_token false: none
  // (getrandom failed).
  wire::LinkToken token{};
  bool has_token = false;
};

// Which staged checkpoint serves a GET's pid. GETs carry nothing but the pid (docs/protocol.md §1.4), so the page server keeps
// every pid unique across the staged checkpoints (an upload whose pid is already staged is refused), and a
// staged pid wins over the same pid in the -D images (the images were there first; the upload is newer).
class StagedLookup {
 public:
  virtual ~StagedLookup() = default;
  virtual std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const = 0;
  // The staged checkpoint whose link token this is, or null.
  virtual std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const = 0;
};

}  // namespace lazyd
