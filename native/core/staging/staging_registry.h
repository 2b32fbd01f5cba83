// The staging registry (diskless staging: `criu dump --page-server` into lazyd, server/page_server.h): the one
// owner of what uploads leave in lazyd's memory.
//   - the memory budget every upload's store is charged to (--staging-max-bytes);
//   - who owns each task pid: a staged checkpoint or an upload in progress (both named by the upload's session
//     id). A lazy GET names nothing but the pid (docs/protocol.md §1.4), so pids are unique across both (admit);
//   - the sealed stores of uploads whose CLOSE status waits for the control plane to write their images
//     (hold_sealed / sealed / drop_sealed);
//   - the link token of each checkpoint (draw_token: an upload's at hold_sealed, a relay's before its publish);
//   - publish (a committed upload or a relay's pull becomes staged checkpoint #id, found by GETs through
//     find_pid, and by HELLOs through find_token), the count of
//     completed restores against --staging-restores, and retire (no longer offered to new sessions: sessions
//     already bound to it keep its store, and its memory, until they end);
//   - the checkpoints of resumable lazyd link sessions (pin / unpin): reachable by token while such a session
//     lasts and for --link-resume-hold after it was cut, even once retired, so its restore can reconnect.
// The images' page files are written by page_files.h, off the page server's thread.
//
// Thread use: the page server's thread calls everything; sealed() and drop_sealed() may be called from any
// thread (the binding's writePages and ackUpload); the budget is thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "staging/page_store.h"
#include "staging/staged_checkpoint.h"

namespace lazyd {

class StagingRegistry final : public StagedLookup {
 public:
  // max_bytes: --staging-max-bytes; release_after_restores: --staging-restores (0: never).
  StagingRegistry(uint64_t max_bytes, uint64_t release_after_restores);

  const std::shared_ptr<MemoryBudget>& budget() const { return budget_; }

  // ---- uploads in progress ----

  // Upload `upload` opens a pagemap: "" when it may, else why not (the upload then fails with that message).
  std::string admit(uint64_t upload, PageKey key);
  // The upload failed: its pids are free again (its store goes with the session).
  void abandon(uint64_t upload);

  // CLOSE arrived: the sealed store is readable by the control plane (for writing the images) until it answers.
  // Also draws the checkpoint's link token (draw_token); returns 0 or -errno from getrandom.
  int hold_sealed(uint64_t upload, std::shared_ptr<const PageStore> store);
  // Draws the link token (docs/protocol.md §7) that checkpoint #id is published with; the control plane writes
  // it into the checkpoint's lazyd-link.json. The one place tokens are drawn: an upload's at hold_sealed, a
  // relay's just before its publish. Returns 0 or -errno from getrandom (then #id is published without one).
  int draw_token(uint64_t id);
  // The link token drawn for #id and not published yet, or null.
  const wire::LinkToken* upload_token(uint64_t id) const;
  // Any thread: the sealed store of an upload waiting for its answer, or null.
  std::shared_ptr<const PageStore> sealed(uint64_t upload) const;
  // Any thread: the control plane answered.
  void drop_sealed(uint64_t upload);

  // ---- staged checkpoints ----

  // The upload committed (or a relay's pull starts): it becomes staged checkpoint #upload (its pids are already
  // its own, from admit), with the token draw_token drew for it, if any.
  std::shared_ptr<const StagedCheckpoint> publish(uint64_t upload, std::shared_ptr<const PageStore> store);
  // A restore from `checkpoint` completed (its client sent CLOSE and hung up cleanly). Returns the number of
  // completed restores so far, or 0 when the checkpoint is no longer staged; *retire_now says whether
  // --staging-restores is reached.
  uint64_t restore_completed(uint64_t checkpoint, bool* retire_now);
  // Stops offering the checkpoint to new sessions. False when it was not staged.
  bool retire(uint64_t checkpoint);

  // ---- resumable sessions (feature resume, docs/protocol.md §7.6) ----

  // A session granted feature resume is bound to checkpoint: while it lasts the checkpoint stays reachable by its
  // token (find_token), retired or not, so the restore behind it can reconnect.
  void pin(const std::shared_ptr<const StagedCheckpoint>& checkpoint);
  // That session ended. cut (no CLOSE): reachable by its token for hold_ns more; else once no session pins it, only
  // while still staged.
  void unpin(uint64_t checkpoint, bool cut, uint64_t now_ns, uint64_t hold_ns);
  // Forgets the holds that are over (their stores go once no session holds them).
  void expire_holds(uint64_t now_ns);
  size_t holds() const { return resumable_.size(); }

  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override;
  std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const override;

 private:
  struct Staged {
    std::shared_ptr<const StagedCheckpoint> checkpoint;
    uint64_t restores = 0;
  };

  const std::shared_ptr<MemoryBudget> budget_;
  const uint64_t release_after_restores_;
  std::unordered_map<uint64_t, Staged> staged_;       // by checkpoint id
  std::unordered_map<uint64_t, uint64_t> pid_owner_;  // pid -> checkpoint or upload id
  mutable std::mutex sealed_mutex_;
  std::unordered_map<uint64_t, std::shared_ptr<const PageStore>> sealed_;  // uploads awaiting their answer
  std::unordered_map<uint64_t, wire::LinkToken> tokens_;  // by upload id, from draw_token to publish/abandon
  struct Resumable {
    std::shared_ptr<const StagedCheckpoint> checkpoint;
    uint64_t sessions = 0;    // resumable sessions bound to it now
    uint64_t held_until = 0;  // a cut one may come back until then (now_ns() clock)
  };
  std::unordered_map<uint64_t, Resumable> resumable_;  // by checkpoint id
};

}  // namespace lazyd
