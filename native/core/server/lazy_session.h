// One lazy-fetch connection of the page server (protocol doc §1.6): reads GET/CLOSE headers, answers each GET
// with an ADD_F|PE_PRESENT header and the page bytes sent straight from the pages image (sendfile: no
// user-space copy), strictly in request order. Knows nothing of epoll: the server calls on_readable() and
// on_writable() and asks wants_read()/wants_write().
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "server/page_index.h"
#include "staging/page_store.h"
#include "net/transport.h"
#include "wire/wire.h"

namespace lazyd {

struct SessionLimits {
  wire::Format format = wire::Format::Unknown;  // Unknown: detect from the first header
  uint64_t max_request_pages = 65536;           // a GET for more pages is refused
  size_t max_queued_replies = 64;               // stop reading requests while this many replies are unsent
  // Stop reading requests while the replies accepted but not yet sent hold this many bytes (headers + pages).
  // Backpressure, not a kill: at least one reply is always accepted, so a GET up to max_request_pages works.
  uint64_t max_queued_bytes = 64ull << 20;
};

struct SessionStats {
  uint64_t gets = 0;
  uint64_t pages = 0;
  uint64_t bytes_out = 0;
  uint64_t bytes_in = 0;  // request headers read
  bool closed_by_request = false;  // CLOSE/FORCE_CLOSE seen
};

// A checkpoint staged by an upload (`criu dump --page-server` into lazyd): its sealed store, served until a
// policy releases it. Sessions that fetch from it hold a reference, so a release never cuts a restore short.
struct StagedCheckpoint {
  uint64_t id = 0;  // the upload session's id
  std::shared_ptr<const PageStore> store;
};

// Which staged checkpoint serves a GET's pid. GETs carry nothing but the pid (§1.4), so the page server keeps
// every pid unique across the staged checkpoints (an upload whose pid is already staged is refused), and a
// staged pid wins over the same pid in the -D images (the images were there first; the upload is newer).
class StagedLookup {
 public:
  virtual ~StagedLookup() = default;
  virtual std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const = 0;
};

class LazySession {
 public:
  enum class Status { kOpen, kDone, kFailed };

  // staged may be null (serve the images only). A session binds to the staged checkpoint of its first staged
  // GET; every later GET of a staged pid must belong to that same checkpoint (one restore = one checkpoint).
  LazySession(int fd, const PageIndex& index, const SessionLimits& limits, const StagedLookup* staged = nullptr);
  // The same over a transport (a plain socket or an established TLS session, §1.9).
  LazySession(std::unique_ptr<Transport> transport, const PageIndex& index, const SessionLimits& limits,
              const StagedLookup* staged = nullptr);
  ~LazySession();
  LazySession(const LazySession&) = delete;
  LazySession& operator=(const LazySession&) = delete;

  Status on_readable();
  Status on_writable();
  // Draining: no new request is read; the session ends once its queued replies are sent.
  Status stop_reading();

  bool wants_read() const { return !stop_reading_ && !eof_ && has_room(); }
  bool wants_write() const { return !replies_.empty(); }
  bool has_unsent_replies() const { return !replies_.empty(); }
  // Bytes of the replies accepted but not yet sent (bounded by max_queued_bytes plus one reply).
  uint64_t queued_bytes() const { return queued_bytes_; }
  // Requests read and not yet answered in full (their replies are queued or being sent).
  size_t queued_replies() const { return replies_.size(); }

  int fd() const { return transport_->fd(); }
  // Input already taken off the socket (TLS): the server must not wait on epoll for it.
  bool has_buffered_input() const { return transport_->buffered(); }
  wire::Format format() const { return format_; }
  const SessionStats& stats() const { return stats_; }
  const std::string& error() const { return error_; }
  // The staged checkpoint this session fetched from, if any.
  const std::shared_ptr<const StagedCheckpoint>& bound() const { return bound_; }

 private:
  struct Reply {
    uint8_t head[wire::HEADER_SIZE_MAX];
    size_t head_len = 0;
    size_t head_sent = 0;
    int file_fd = -1;
    uint64_t file_offset = 0;
    uint64_t file_left = 0;
    std::shared_ptr<const PageStore> store;  // a staged reply: span's bytes come from the store
    StoreSpan span;
    uint64_t store_done = 0;
  };

  Status handle_requests();
  Status handle_get(const wire::Header& header);
  Status queue_close_status();
  Status flush();
  // TLS: the page bytes of the front reply, read into copy_ and sent in records of their own (§1.9).
  Status flush_copied(Reply& reply);
  Status fail(std::string message);
  Status fail_io(const char* what, ssize_t err);
  Status settle();
  Status pump();
  bool has_room() const {
    return replies_.size() < limits_.max_queued_replies && queued_bytes_ < limits_.max_queued_bytes;
  }
  void queue(Reply reply);

  std::unique_ptr<Transport> transport_;
  const PageIndex& index_;
  const StagedLookup* staged_;
  std::shared_ptr<const StagedCheckpoint> bound_;
  ServeScratch scratch_;
  SessionLimits limits_;
  wire::Format format_;
  uint8_t in_[4096];
  size_t in_len_ = 0;
  std::deque<Reply> replies_;
  uint64_t queued_bytes_ = 0;
  bool eof_ = false;
  bool stop_reading_ = false;
  bool close_seen_ = false;
  size_t close_slack_ = 0;  // a CLOSE read before the format was known may be followed by 8 zero bytes (§1.2)
  std::vector<uint8_t> copy_;  // TLS only: page bytes read, [copy_off_, copy_len_) not yet sent
  size_t copy_off_ = 0;
  size_t copy_len_ = 0;
  SessionStats stats_;
  std::string error_;
};

}  // namespace lazyd
