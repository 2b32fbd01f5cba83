// One lazy-fetch connection of the page server (docs/protocol.md §1.6): reads GET/CLOSE headers, answers each GET
// with an ADD_F|PE_PRESENT header and the page bytes sent straight from the pages image (sendfile: no
// user-space copy), strictly in request order. A Session (server/session.h): the server's epoll loop drives it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "server/page_index.h"
#include "server/session.h"
#include "staging/page_store.h"
#include "staging/staged_checkpoint.h"
#include "wire/page_checksums.h"
#include "wire/wire.h"

namespace lazyd {

// Set from lazyd's flags (their defaults live in src/config/flags.ts, never here): a caller sets every one.
struct SessionLimits {
  wire::Format format = wire::Format::Unknown;  // --criu-abi; Unknown: detect from the first header
  uint64_t max_request_pages = 0;               // --max-request-pages: a GET for more pages is refused
  size_t max_queued_replies = 0;                // --max-inflight: stop reading requests while this many replies are unsent
  // --max-session-bytes: stop reading requests while the replies accepted but not yet sent hold this many bytes
  // (headers + pages). Backpressure, not a kill: at least one reply is always accepted, so a GET up to
  // max_request_pages works.
  uint64_t max_queued_bytes = 0;
  // --require-link-token (docs/protocol.md §7): a fetch session must open with a HELLO naming a staged
  // checkpoint's token; a stock CRIU client (no HELLO) is refused at its first GET.
  bool require_link_token = false;
};

struct SessionStats {
  uint64_t gets = 0;
  uint64_t pages = 0;
  uint64_t bytes_out = 0;
  uint64_t bytes_in = 0;  // request headers read
  bool closed_by_request = false;  // CLOSE/FORCE_CLOSE seen
  uint64_t waits = 0;              // GETs that waited for a relay to pull their pages
  bool hello = false;              // the session opened with a lazyd HELLO (§7)
  bool priority = false;           // granted feature priority: a restore's second connection (§7.5), not its end
  bool resume = false;             // granted feature resume: cut, the client comes back (§7.6)
  bool link_refused = false;       // ended by the link binding: unknown token, no token under
                                   // --require-link-token, or a GET outside the token's checkpoint
};

class LazySession final : public Session {
 public:
  // staged may be null (serve the images only). A session binds to the staged checkpoint of its first staged
  // GET; every later GET of a staged pid must belong to that same checkpoint (one restore = one checkpoint).
  LazySession(int fd, const PageIndex& index, const SessionLimits& limits, const StagedLookup* staged = nullptr);
  // The same over a transport (a plain socket or an established TLS session, §1.9).
  LazySession(std::unique_ptr<Transport> transport, const PageIndex& index, const SessionLimits& limits,
              const StagedLookup* staged = nullptr);
  ~LazySession() override;

  // Faults first on the server too: a session that is not a lazyd priority connection sends at most
  // kSendSliceBytes per wake-up, then the loop serves the other sessions (a priority connection's GETs wait
  // behind one slice of the drain's sending, copying and checksumming, not behind a socket buffer's worth); epoll
  // is level-triggered here, so the rest goes out on the next pass.
  static constexpr uint64_t kSendSliceBytes = 256 * 1024;
  // A staged reply of at most this many page bytes leaves in one sendmsg: header, pages and checksum trailer in
  // one segment (sendfile pushes the pages out alone, and the trailer followed as a segment of its own: through
  // the bench's delay line a demand fault's 4 KiB reply cost 40-70 us more). A fault-around's worth.
  static constexpr uint64_t kGatherMaxBytes = 64 * 1024;

  Status on_readable() override;
  Status on_writable() override;
  // Draining: no new request is read; the session ends once its queued replies are sent.
  Status drain() override;

  // While a GET waits (relay staging), requests behind it are read into in_ but not parsed, so a hang-up is seen.
  bool wants_read() const override {
    return !stop_reading_ && !eof_ && (has_room() || (waiting_ && in_len_ < sizeof in_));
  }
  bool wants_write() const override { return !replies_.empty(); }
  SessionTotals totals() const override;
  bool peer_waits() const override { return !replies_.empty() || waiting_; }
  bool reply_pending() const override { return !replies_.empty(); }
  // Bytes of the replies accepted but not yet sent (bounded by max_queued_bytes plus one reply).
  uint64_t queued_bytes() const { return queued_bytes_; }

  const SessionStats& stats() const { return stats_; }
  // The staged checkpoint this session fetched from, if any.
  const std::shared_ptr<const StagedCheckpoint>& bound() const { return bound_; }

  // Relay staging: a GET whose first page the (bound) staged store does not hold yet waits, and every request
  // behind it (replies stay in order); the thread is not blocked. The server asks the relay for the pages and
  // calls on_writable() once pages_ready() of waiting_span() is not 0 (or the store says they never come).
  bool waiting() const { return waiting_; }
  const StoreSpan& waiting_span() const { return waiting_span_; }
  const wire::Header& waiting_get() const { return waiting_get_; }
  // True once per wait: the server then asks the relay for the pages.
  bool take_new_wait() {
    const bool fresh = waiting_ && !wait_seen_;
    wait_seen_ = waiting_;
    return fresh;
  }

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
    const uint8_t* view = nullptr;  // span's bytes in the sealed store's mapping, for a reply sent gathered
    // Feature checksum (§7.4): built from a sealed store's mapping when queued, else from the page bytes as they
    // are read into copy_; sent after them.
    wire::ChecksumBuilder checksums;
    size_t trailer_sent = 0;
  };

  Status handle_requests();
  Status handle_get(const wire::Header& header);
  Status handle_hello(const uint8_t* head);
  Status refuse_link(std::string message);
  Status queue_close_status();
  // A GET reply: the header for header, and the trailer's place when the session checksums its pages.
  Reply get_reply(const wire::Header& header, uint64_t nr_pages);
  Status flush();
  // TLS, or a checksum session whose store has no mapping: the page bytes of the front reply, read into copy_
  // (and checksummed there) and sent from it, under TLS in records of their own (§1.9).
  Status flush_copied(Reply& reply);
  // The front reply's trailer, after its pages; *sent once all of it is out (a reply without one: at once).
  Status send_trailer(Reply& reply, bool* sent);
  // A small staged reply (view set, nothing of it sent yet): as much of header, pages and trailer as the socket
  // takes in one sendmsg; *sent once all of it is out, else flush() goes on from where it stopped.
  Status send_gathered(Reply& reply, bool* sent);
  Status fail(std::string message);
  Status fail_io(const char* what, ssize_t err);
  Status settle();
  Status pump();
  // A slice bounds what one wake-up of a drain session does: the bytes it sends, and the bytes it checksums in a
  // sealed store's mapping while it reads GETs (before this bound one pass checksummed every GET the socket held,
  // up to --max-session-bytes: a priority GET waited 200-400 us behind it).
  void new_slice() { slice_left_ = checksum_left_ = stats_.priority ? UINT64_MAX : kSendSliceBytes; }
  bool checksums_spent() const { return checksum_left_ == 0 && !replies_.empty(); }
  bool slice_spent() const { return slice_left_ == 0; }
  void spend(uint64_t bytes) { slice_left_ -= std::min(slice_left_, bytes); }
  bool has_room() const {
    return !waiting_ && replies_.size() < limits_.max_queued_replies && queued_bytes_ < limits_.max_queued_bytes;
  }
  void queue(Reply reply);

  const PageIndex& index_;
  const StagedLookup* staged_;
  std::shared_ptr<const StagedCheckpoint> bound_;
  ServeScratch scratch_;
  SessionLimits limits_;
  uint8_t in_[4096];
  size_t in_len_ = 0;
  std::deque<Reply> replies_;
  uint64_t queued_bytes_ = 0;
  bool eof_ = false;
  bool stop_reading_ = false;
  bool close_seen_ = false;
  bool first_request_ = true;  // HELLO is only ever the first request
  bool token_bound_ = false;
  bool checksums_ = false;     // the HELLO was granted feature checksum: every GET reply carries a trailer
  std::string failure_after_replies_;  // a refused HELLO: its reply is sent, then the session fails with this   // bound_ was named by a HELLO's token: nothing outside it is served
  size_t close_slack_ = 0;  // a CLOSE read before the format was known may be followed by 8 zero bytes (§1.2)
  std::vector<uint8_t> copy_;  // TLS only: page bytes read, [copy_off_, copy_len_) not yet sent
  size_t copy_off_ = 0;
  size_t copy_len_ = 0;
  SessionStats stats_;
  uint64_t slice_left_ = kSendSliceBytes;
  uint64_t checksum_left_ = kSendSliceBytes;
  bool waiting_ = false;      // waiting_get_ waits for its pages (relay staging)
  bool wait_seen_ = false;
  bool retrying_ = false;     // handle_get() runs the waiting GET again
  wire::Header waiting_get_;
  StoreSpan waiting_span_;
};

}  // namespace lazyd
