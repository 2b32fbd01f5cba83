// One page-server connection as the server's epoll thread drives it (server/page_server.cc): a lazy fetch
// (LazySession) or an image upload (UploadSession). A session knows nothing of epoll: the server calls
// on_readable() / on_writable() when the socket is ready, asks wants_read() / wants_write() what to wait for,
// and reads totals() for its counters and timeouts. Its bytes travel through a Transport (plain or TLS).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "net/transport.h"
#include "wire/wire.h"

namespace lazyd {

// What a session has moved so far (for the daemon-wide counters and the idle and stall timeouts).
struct SessionTotals {
  uint64_t gets = 0;       // GETs answered or being answered
  uint64_t pages = 0;      // pages in those replies
  uint64_t bytes_out = 0;  // reply bytes sent (lazy fetch)
  uint64_t bytes_in = 0;   // request and upload bytes read (headers + page data)
  uint64_t in_flight = 0;  // requests read, replies not yet sent in full
};

class Session {
 public:
  enum class Status { kOpen, kDone, kFailed };

  virtual ~Session() = default;
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  virtual Status on_readable() = 0;
  virtual Status on_writable() = 0;
  // lazyd is shutting down (--drain-timeout): a lazy fetch reads no new request and ends once its queued replies
  // are sent; an upload fails (the dump then fails and CRIU resumes the tasks).
  virtual Status drain() = 0;
  virtual bool wants_read() const = 0;
  virtual bool wants_write() const = 0;

  virtual SessionTotals totals() const = 0;
  // The peer waits for us (a reply to send, the control plane's acknowledgement): no idle timeout then.
  virtual bool peer_waits() const = 0;
  // A reply the peer has to read is pending: the stall timeout watches bytes_out.
  virtual bool reply_pending() const = 0;

  int fd() const { return transport_->fd(); }
  // Input already taken off the socket (TLS): the server must not wait on epoll for it.
  bool has_buffered_input() const { return transport_->buffered(); }
  wire::Format format() const { return format_; }
  const std::string& error() const { return error_; }

 protected:
  Session(std::unique_ptr<Transport> transport, wire::Format format)
      : transport_(std::move(transport)), format_(format) {}

  std::unique_ptr<Transport> transport_;
  wire::Format format_;  // Unknown until the first header decides (or --criu-abi)
  std::string error_;
};

}  // namespace lazyd
