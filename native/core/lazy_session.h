// One lazy-fetch connection of the page server (protocol doc §1.6): reads GET/CLOSE headers, answers each GET
// with an ADD_F|PE_PRESENT header and the page bytes sent straight from the pages image (sendfile: no
// user-space copy), strictly in request order. Knows nothing of epoll: the server calls on_readable() and
// on_writable() and asks wants_read()/wants_write().
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "page_index.h"
#include "wire.h"

namespace lazyd {

struct SessionLimits {
  wire::Format format = wire::Format::Unknown;  // Unknown: detect from the first header
  uint64_t max_request_pages = 65536;           // a GET for more pages is refused
  size_t max_queued_replies = 64;               // stop reading requests while this many replies are unsent
};

struct SessionStats {
  uint64_t gets = 0;
  uint64_t pages = 0;
  uint64_t bytes_out = 0;
  bool closed_by_request = false;  // CLOSE/FORCE_CLOSE seen
};

class LazySession {
 public:
  enum class Status { kOpen, kDone, kFailed };

  LazySession(int fd, const PageIndex& index, const SessionLimits& limits);
  ~LazySession();
  LazySession(const LazySession&) = delete;
  LazySession& operator=(const LazySession&) = delete;

  Status on_readable();
  Status on_writable();
  // Draining: no new request is read; the session ends once its queued replies are sent.
  Status stop_reading();

  bool wants_read() const { return !stop_reading_ && !eof_ && replies_.size() < limits_.max_queued_replies; }
  bool wants_write() const { return !replies_.empty(); }
  bool has_unsent_replies() const { return !replies_.empty(); }

  int fd() const { return fd_; }
  wire::Format format() const { return format_; }
  const SessionStats& stats() const { return stats_; }
  const std::string& error() const { return error_; }

 private:
  struct Reply {
    uint8_t head[wire::HEADER_SIZE_MAX];
    size_t head_len = 0;
    size_t head_sent = 0;
    int file_fd = -1;
    uint64_t file_offset = 0;
    uint64_t file_left = 0;
  };

  Status handle_requests();
  Status handle_get(const wire::Header& header);
  Status queue_close_status();
  Status flush();
  Status fail(std::string message);
  Status settle();

  int fd_;
  const PageIndex& index_;
  SessionLimits limits_;
  wire::Format format_;
  uint8_t in_[4096];
  size_t in_len_ = 0;
  std::deque<Reply> replies_;
  bool eof_ = false;
  bool stop_reading_ = false;
  bool close_seen_ = false;
  size_t close_slack_ = 0;  // a CLOSE read before the format was known may be followed by 8 zero bytes (§1.2)
  SessionStats stats_;
  std::string error_;
};

}  // namespace lazyd
