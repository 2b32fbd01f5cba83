// The receiving side of one image-upload connection (`criu dump|pre-dump --page-server` -> lazyd; docs/protocol.md
// §1.5): reads OPEN2/OPEN/PARENT/ADD_F/ADD/HOLE/CLOSE headers and moves every payload from the socket straight
// into a private PageStore (splice or read into a memfd; never through a session buffer). The store is published
// only after a clean end: CLOSE answered, then the client's EOF. Any failure before the CLOSE status has left
// leaves nothing served: the store is dropped with the session, CRIU's dump fails and resumes the tasks. Once
// the status has left, the dump may have read it, succeeded and ended the tasks: a connection that breaks then
// (a reset instead of EOF) still commits, with a note(), because dropping the upload could lose the process.
//
// lazyd keeps no parent images in staging: OPEN2 answers has_parent = 0 and PARENT answers 0, so a pre-dump
// client sends every page (no PE_PARENT holes). Holes that arrive anyway are recorded as metadata only.
//
// A Session (server/session.h), as LazySession: the server's epoll loop drives it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "server/session.h"
#include "staging/page_store.h"
#include "wire/wire.h"

namespace lazyd {

struct UploadLimits {
  wire::Format format = wire::Format::Unknown;  // Unknown: detect from the first header
  uint64_t max_entry_pages = 1ull << 18;        // an ADD_F for more pages fails the upload
  // Staging in the page server: the CLOSE reply is held back until the owner has written the images and
  // called ack_close(). The store is sealed when CLOSE arrives, so it can be read (write_pages) meanwhile.
  // A dump that gets no CLOSE status fails, and CRIU resumes the tasks.
  bool hold_close_reply = false;
  // Called for every pagemap the upload opens; a non-empty answer fails the upload with that message.
  std::function<std::string(PageKey)> admit_key;
};

struct UploadStats {
  uint64_t opens = 0;           // OPEN2 + OPEN + implicit opens
  uint64_t implicit_opens = 0;  // "Deprecated IO w/o open" (§1.5 step 4)
  uint64_t entries = 0;
  uint64_t pages_with_data = 0;
  uint64_t pages_without_data = 0;  // PE_LAZY-only and PE_PARENT entries
  uint64_t bytes_in = 0;            // headers + payload
  bool close_seen = false;
};

class UploadSession final : public Session {
 public:
  // Takes the socket (closed by the destructor) and a fresh, empty store.
  UploadSession(int fd, std::unique_ptr<PageStore> store, const UploadLimits& limits);
  // The same over a transport (a plain socket, or an established TLS session: payloads are then decrypted in
  // user space and copied into the store, §1.9).
  UploadSession(std::unique_ptr<Transport> transport, std::unique_ptr<PageStore> store, const UploadLimits& limits);
  ~UploadSession() override;

  Status on_readable() override;
  Status on_writable() override;
  // lazyd is shutting down: the upload fails (the dump gets no CLOSE status, fails, and CRIU resumes the tasks).
  Status drain() override;

  bool wants_read() const override {
    return !failed_ && !committed_ && !eof_ && out_len_ + sizeof(int32_t) <= sizeof out_;
  }
  bool wants_write() const override { return out_sent_ < out_len_; }
  SessionTotals totals() const override;
  // Waiting for the control plane to write the images (awaiting_ack), or for the socket to take a reply.
  bool peer_waits() const override { return awaiting_ack() || wants_write(); }
  // Its replies are a few bytes: the dump is never stalled on them (it pushes; the idle timeout covers it).
  bool reply_pending() const override { return false; }

  // True once the upload ended cleanly (CLOSE answered, EOF from the client): the store is complete and sealed.
  bool committed() const { return committed_; }
  // The sealed store of a committed upload, once; nullptr otherwise.
  std::shared_ptr<PageStore> take_store();
  // hold_close_reply: CLOSE has arrived, the store is sealed, the reply waits for ack_close().
  bool awaiting_ack() const { return awaiting_ack_ && !failed_; }
  // The store, shared (for writing images while awaiting_ack()).
  std::shared_ptr<const PageStore> shared_store() const { return store_; }
  // ok: send the CLOSE status (the upload commits once the client hangs up); otherwise fail with message
  // (the dump gets no status, fails, and CRIU resumes the tasks).
  Status ack_close(bool ok, const std::string& message);
  // Progress while filling (memory held, entries).
  const PageStore* store() const { return store_.get(); }

  const UploadStats& stats() const { return stats_; }
  // Set on a committed upload whose connection broke after the CLOSE status had left (see above).
  const std::string& note() const { return note_; }

 private:
  enum class Phase { kHeader, kPayload, kClosed };

  Status read_header();
  Status read_payload();
  Status read_after_close();
  Status handle(const wire::Header& header);
  Status handle_entry(const wire::Header& header, uint32_t flags);
  Status open(uint64_t dst_id, const char* how, PageKey* key);
  Status reply(const void* data, size_t len);
  Status flush();
  Status fail(std::string message);
  // fail() for a socket error: the peer or the network went away (connection_broke() errors) or another one.
  Status fail_socket(const char* what, int err);
  Status settle();

  std::vector<uint8_t> copy_;  // TLS only: decrypted payload bytes on their way into the store
  std::shared_ptr<PageStore> store_;
  UploadLimits limits_;
  Phase phase_ = Phase::kHeader;
  uint8_t in_[wire::HEADER_SIZE_MAX];
  size_t in_len_ = 0;
  uint8_t out_[64];
  size_t out_len_ = 0;
  size_t out_sent_ = 0;
  bool has_open_ = false;
  uint64_t open_dst_id_ = 0;
  PageKey open_key_ = 0;
  std::string entry_what_;  // the header whose payload is being received, for messages
  uint64_t entry_bytes_ = 0;
  size_t close_slack_ = 0;  // a CLOSE read before the format was known may be followed by 8 zero bytes (§1.2)
  bool eof_ = false;
  bool failed_ = false;
  bool committed_ = false;
  bool awaiting_ack_ = false;
  bool status_queued_ = false;  // the CLOSE status is in out_ (sent once out_sent_ == out_len_)
  UploadStats stats_;
  std::string note_;
};

}  // namespace lazyd
