#include "staging/staging_registry.h"

#include <algorithm>

#include "util/clock.h"
#include "wire/wire.h"

namespace lazyd {

StagingRegistry::StagingRegistry(uint64_t max_bytes, uint64_t release_after_restores)
    : budget_(std::make_shared<MemoryBudget>(max_bytes)), release_after_restores_(release_after_restores) {}

std::string StagingRegistry::admit(uint64_t upload, PageKey key) {
  if (key_type(key) != wire::PS_TYPE_PID) return "";  // shmem ids are never fetched lazily
  const uint64_t pid = key_id(key);
  auto owner = pid_owner_.find(pid);
  if (owner != pid_owner_.end() && owner->second != upload) {
    const bool staged = staged_.count(owner->second) != 0;
    return "pid " + std::to_string(pid) + " is already " +
           (staged ? "staged by checkpoint #" : "being uploaded by session #") + std::to_string(owner->second) +
           ": a lazy GET names only the pid, so two staged checkpoints cannot share one — release checkpoint #" +
           std::to_string(owner->second) + " first";
  }
  pid_owner_[pid] = upload;
  return "";
}

void StagingRegistry::abandon(uint64_t upload) {
  tokens_.erase(upload);
  for (auto it = pid_owner_.begin(); it != pid_owner_.end();) {
    if (it->second == upload) it = pid_owner_.erase(it);
    else ++it;
  }
}

int StagingRegistry::hold_sealed(uint64_t upload, std::shared_ptr<const PageStore> store) {
  const int drawn = draw_token(upload);
  if (drawn != 0) return drawn;
  std::lock_guard<std::mutex> lock(sealed_mutex_);
  sealed_[upload] = std::move(store);
  return 0;
}

int StagingRegistry::draw_token(uint64_t id) {
  wire::LinkToken token;
  const int drawn = wire::random_token(&token);
  if (drawn != 0) return drawn;
  tokens_[id] = token;
  return 0;
}

const wire::LinkToken* StagingRegistry::upload_token(uint64_t id) const {
  auto found = tokens_.find(id);
  return found == tokens_.end() ? nullptr : &found->second;
}

std::shared_ptr<const PageStore> StagingRegistry::sealed(uint64_t upload) const {
  std::lock_guard<std::mutex> lock(sealed_mutex_);
  auto found = sealed_.find(upload);
  return found == sealed_.end() ? nullptr : found->second;
}

void StagingRegistry::drop_sealed(uint64_t upload) {
  std::lock_guard<std::mutex> lock(sealed_mutex_);
  sealed_.erase(upload);
}

std::shared_ptr<const StagedCheckpoint> StagingRegistry::publish(uint64_t upload,
                                                                 std::shared_ptr<const PageStore> store) {
  auto checkpoint = std::make_shared<StagedCheckpoint>();
  checkpoint->id = upload;
  checkpoint->store = std::move(store);
  auto token = tokens_.find(upload);
  if (token != tokens_.end()) {
    checkpoint->token = token->second;
    checkpoint->has_token = true;
    tokens_.erase(token);
  }
  staged_[upload] = Staged{checkpoint, 0};
  return checkpoint;
}

uint64_t StagingRegistry::restore_completed(uint64_t checkpoint, bool* retire_now) {
  *retire_now = false;
  auto found = staged_.find(checkpoint);
  if (found == staged_.end()) return 0;
  const uint64_t restores = ++found->second.restores;
  *retire_now = release_after_restores_ != 0 && restores >= release_after_restores_;
  return restores;
}

bool StagingRegistry::retire(uint64_t checkpoint) {
  auto found = staged_.find(checkpoint);
  if (found == staged_.end()) return false;
  for (PageKey key : found->second.checkpoint->store->keys()) {
    if (key_type(key) != wire::PS_TYPE_PID) continue;
    auto owner = pid_owner_.find(key_id(key));
    if (owner != pid_owner_.end() && owner->second == checkpoint) pid_owner_.erase(owner);
  }
  staged_.erase(found);  // sessions still bound to it hold the store until they end
  return true;
}

void StagingRegistry::pin(const std::shared_ptr<const StagedCheckpoint>& checkpoint) {
  if (!checkpoint || !checkpoint->has_token) return;
  Resumable& entry = resumable_[checkpoint->id];
  entry.checkpoint = checkpoint;
  entry.sessions++;
}

void StagingRegistry::unpin(uint64_t checkpoint, bool cut, uint64_t now_ns, uint64_t hold_ns) {
  auto found = resumable_.find(checkpoint);
  if (found == resumable_.end()) return;
  Resumable& entry = found->second;
  if (entry.sessions) entry.sessions--;
  if (cut) entry.held_until = std::max(entry.held_until, now_ns + hold_ns);
  expire_holds(now_ns);
}

void StagingRegistry::expire_holds(uint64_t now_ns) {
  for (auto it = resumable_.begin(); it != resumable_.end();) {
    if (it->second.sessions == 0 && it->second.held_until <= now_ns) it = resumable_.erase(it);
    else ++it;
  }
}

std::shared_ptr<const StagedCheckpoint> StagingRegistry::find_pid(uint64_t pid) const {
  auto owner = pid_owner_.find(pid);
  if (owner == pid_owner_.end()) return nullptr;
  auto found = staged_.find(owner->second);
  return found == staged_.end() ? nullptr : found->second.checkpoint;
}

namespace {

bool token_is(const StagedCheckpoint& checkpoint, const wire::LinkToken& token) {
  if (!checkpoint.has_token) return false;
  uint8_t differ = 0;  // every byte compared: the time taken says nothing of how much of a guess was right
  for (size_t i = 0; i < token.size(); i++) differ |= static_cast<uint8_t>(checkpoint.token[i] ^ token[i]);
  return differ == 0;
}

}  // namespace

std::shared_ptr<const StagedCheckpoint> StagingRegistry::find_token(const wire::LinkToken& token) const {
  for (const auto& [id, staged] : staged_) {
    if (token_is(*staged.checkpoint, token)) return staged.checkpoint;
  }
  // Released meanwhile, but a resumable session of it is open or was cut lately (feature resume).
  const uint64_t now = now_ns();
  for (const auto& [id, entry] : resumable_) {
    if ((entry.sessions > 0 || entry.held_until > now) && token_is(*entry.checkpoint, token)) return entry.checkpoint;
  }
  return nullptr;
}

}  // namespace lazyd
