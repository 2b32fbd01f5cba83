#include "server/upload_session.h"

#include "util/text.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>

namespace lazyd {
namespace {

std::string flag_names(uint32_t flags) {
  std::string out;
  if (flags & wire::PE_PARENT) out += "PE_PARENT|";
  if (flags & wire::PE_LAZY) out += "PE_LAZY|";
  if (flags & wire::PE_PRESENT) out += "PE_PRESENT|";
  if (flags & ~(wire::PE_PARENT | wire::PE_LAZY | wire::PE_PRESENT)) out += hex(flags) + "|";
  if (out.empty()) return "0";
  out.pop_back();
  return out;
}

constexpr const char* kNothingKept = ": nothing of this upload is kept";

// Errors a socket read reports when the peer or the network went away (a reset, a dead host), as opposed to
// the store failing: they get their own wording, so the log says which side broke.
bool connection_broke(int err) {
  switch (err) {
    case ECONNRESET:
    case ECONNABORTED:
    case ETIMEDOUT:
    case EPIPE:
    case ENOTCONN:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
      return true;
    default:
      return false;
  }
}

}  // namespace

UploadSession::UploadSession(int fd, std::unique_ptr<PageStore> store, const UploadLimits& limits)
    : UploadSession(std::make_unique<Transport>(fd), std::move(store), limits) {}

UploadSession::UploadSession(std::unique_ptr<Transport> transport, std::unique_ptr<PageStore> store,
                             const UploadLimits& limits)
    : Session(std::move(transport), limits.format), store_(std::move(store)), limits_(limits) {}

UploadSession::~UploadSession() = default;

UploadSession::Status UploadSession::drain() {
  return fail("lazyd is shutting down: the upload is dropped; the dump fails and CRIU resumes the tasks");
}

SessionTotals UploadSession::totals() const {
  SessionTotals totals;
  totals.bytes_in = stats_.bytes_in;
  return totals;
}


std::shared_ptr<PageStore> UploadSession::take_store() {
  if (!committed_) return nullptr;
  return std::move(store_);
}

UploadSession::Status UploadSession::ack_close(bool ok, const std::string& message) {
  if (failed_) return Status::kFailed;
  if (!awaiting_ack_) return fail("internal: CLOSE acknowledged twice");
  awaiting_ack_ = false;
  if (!ok) return fail(message + kNothingKept);
  const int32_t status = 0;
  status_queued_ = true;
  Status result = reply(&status, sizeof status);
  return result == Status::kOpen ? settle() : result;
}

UploadSession::Status UploadSession::fail(std::string message) {
  if (!failed_) error_ = std::move(message);
  failed_ = true;
  return Status::kFailed;
}

UploadSession::Status UploadSession::fail_socket(const char* what, int err) {
  const std::string tls_error = transport_->error();  // a TLS failure names itself (docs/protocol.md §1.9)
  if (!tls_error.empty()) return fail("TLS: " + tls_error + kNothingKept);
  if (!connection_broke(err)) return fail(std::string(what) + " failed: " + strerror(err) + kNothingKept);
  std::string where = "the dump's connection broke after " + std::to_string(stats_.entries) + " entries";
  if (phase_ == Phase::kClosed) {
    where = "the dump's connection broke after its CLOSE, before lazyd's CLOSE status had left";
  } else if (phase_ == Phase::kPayload) {
    where = entry_what_ + ": the dump's connection broke after " +
            std::to_string(entry_bytes_ - store_->pending_bytes()) + " of " + std::to_string(entry_bytes_) +
            " payload bytes";
  }
  return fail(where + " (" + strerror(err) + ")" + kNothingKept);
}

// Committed once the CLOSE status has left and the client has hung up (§1.5 step 6): only then is every byte
// known to have arrived and the dump known to have read our answer. (A reset after the status also commits:
// read_after_close.)
UploadSession::Status UploadSession::settle() {
  if (failed_) return Status::kFailed;
  if (committed_) return Status::kDone;
  if (awaiting_ack_ && eof_) {
    return fail(std::string("the dump disconnected before the CLOSE status was sent") + kNothingKept);
  }
  if (phase_ == Phase::kClosed && !awaiting_ack_ && eof_ && out_sent_ == out_len_) {
    int err = store_->seal();
    if (err) return fail(std::string("sealing the staged pages failed: ") + store_error_text(err));
    committed_ = true;
    return Status::kDone;
  }
  return Status::kOpen;
}

UploadSession::Status UploadSession::on_readable() {
  // Each step reads at most what the current header or payload still needs, so no byte of the next payload
  // is ever read into user space: payloads go from the socket to the store directly.
  while (wants_read() && !eof_) {
    const uint64_t before = stats_.bytes_in;
    const bool was_eof = eof_;
    Status status;
    switch (phase_) {
      case Phase::kHeader: status = read_header(); break;
      case Phase::kPayload: status = read_payload(); break;
      default: status = read_after_close(); break;
    }
    if (status != Status::kOpen) return status;
    if (stats_.bytes_in == before && eof_ == was_eof) break;  // EAGAIN
  }
  Status status = flush();
  return status == Status::kOpen ? settle() : status;
}

UploadSession::Status UploadSession::on_writable() {
  Status status = flush();
  return status == Status::kOpen ? settle() : status;
}

UploadSession::Status UploadSession::read_header() {
  const size_t need = format_ == wire::Format::Unknown ? wire::HEADER_SIZE_V24 : wire::header_size(format_);
  ssize_t n = transport_->recv(in_ + in_len_, need - in_len_);
  if (n < 0) {
    if (n == -EAGAIN) return Status::kOpen;
    return fail_socket("receive", static_cast<int>(-n));
  }
  if (n == 0) {
    eof_ = true;
    if (in_len_ == 0) {
      // CRIU's own server: "The data were not flushed" (§1.5 step 6).
      return fail(std::string("the dump disconnected before CLOSE") + kNothingKept);
    }
    return fail("the dump disconnected after " + std::to_string(in_len_) + " bytes of a header" + kNothingKept);
  }
  in_len_ += static_cast<size_t>(n);
  stats_.bytes_in += static_cast<uint64_t>(n);
  if (in_len_ < need) return Status::kOpen;
  if (format_ == wire::Format::Unknown) {
    const uint32_t command = wire::decode(wire::Format::V24, in_).command();
    const wire::Format format = wire::detect(in_, in_len_, store_->page_size());
    if (format == wire::Format::Unknown) {
      if (command == wire::PS_IOV_CLOSE || command == wire::PS_IOV_FORCE_CLOSE) {
        // An upload of nothing. Both layouts get the same 4-byte reply; a 32-byte CLOSE has 8 zero bytes to come.
        in_len_ = 0;
        close_slack_ = wire::HEADER_SIZE_V32 - wire::HEADER_SIZE_V24;
        wire::Header close;
        close.cmd = command;
        return handle(close);
      }
      return fail(std::string("malformed first header (command ") + wire::command_name(command) + " " +
                  hex(command) + "): neither the 24-byte (CRIU <= 4.1) nor the 32-byte (CRIU >= 4.2) layout " +
                  "fits; pass --criu-abi if the peer is a CRIU page-server client");
    }
    format_ = format;
    if (in_len_ < wire::header_size(format_)) return Status::kOpen;
  }
  const wire::Header header = wire::decode(format_, in_);
  in_len_ = 0;
  return handle(header);
}

UploadSession::Status UploadSession::handle(const wire::Header& header) {
  PageKey key;
  switch (header.command()) {
    case wire::PS_IOV_OPEN2: {
      Status status = open(header.dst_id, "OPEN2", &key);
      if (status != Status::kOpen) return status;
      const char has_parent = 0;  // staging keeps no parent images
      return reply(&has_parent, sizeof has_parent);
    }
    case wire::PS_IOV_OPEN:
      return open(header.dst_id, "OPEN", &key);  // legacy: no reply
    case wire::PS_IOV_PARENT: {
      if (!key_from_dst_id(header.dst_id, &key)) {
        return fail("PARENT dst_id " + hex(header.dst_id) + ": unknown pagemap type " +
                    std::to_string(header.dst_id & wire::PS_TYPE_MASK));
      }
      const int32_t has_parent = 0;  // no parent pagemap: the pre-dump sends every page, no holes
      return reply(&has_parent, sizeof has_parent);
    }
    case wire::PS_IOV_ADD_F:
      return handle_entry(header, header.flags());
    case wire::PS_IOV_ADD:
      return handle_entry(header, wire::PE_PRESENT);  // legacy ADD = ADD_F with PE_PRESENT (§1.3)
    case wire::PS_IOV_HOLE:
      return handle_entry(header, wire::PE_PARENT);  // legacy HOLE = ADD_F with PE_PARENT
    case wire::PS_IOV_CLOSE:
    case wire::PS_IOV_FORCE_CLOSE: {
      stats_.close_seen = true;
      phase_ = Phase::kClosed;
      if (limits_.hold_close_reply) {
        int err = store_->seal();
        if (err) return fail(std::string("sealing the staged pages failed: ") + store_error_text(err) + kNothingKept);
        awaiting_ack_ = true;  // the owner writes the images, then ack_close() sends the status
        return Status::kOpen;
      }
      const int32_t status = 0;  // CRIU always answers 0, then waits for the client to close first (§1.5)
      status_queued_ = true;
      return reply(&status, sizeof status);
    }
    case wire::PS_IOV_GET:
      return fail("GET on an upload connection (after " + std::to_string(stats_.entries) +
                  " entries): a connection either uploads or fetches" + kNothingKept);
    default:
      return fail("unknown command " + hex(header.cmd) + ": not a CRIU page-server upload" + kNothingKept);
  }
}

UploadSession::Status UploadSession::open(uint64_t dst_id, const char* how, PageKey* key) {
  if (!key_from_dst_id(dst_id, key)) {
    return fail(std::string(how) + " dst_id " + hex(dst_id) + ": unknown pagemap type " +
                std::to_string(dst_id & wire::PS_TYPE_MASK) + kNothingKept);
  }
  if (store_->entries(*key) != nullptr) {
    // CRIU opens every pagemap once per upload; a second open would make its page server start the
    // pagemap image over.
    return fail(std::string(how) + " " + key_name(*key) + ": this pagemap was already opened in this upload" +
                kNothingKept);
  }
  if (limits_.admit_key) {
    std::string refusal = limits_.admit_key(*key);
    if (!refusal.empty()) return fail(std::string(how) + " " + key_name(*key) + ": " + refusal + kNothingKept);
  }
  int err = store_->open_key(*key);
  if (err) return fail(std::string(how) + ": " + store_error_text(err));
  has_open_ = true;
  open_dst_id_ = dst_id;
  open_key_ = *key;
  stats_.opens++;
  return Status::kOpen;
}

UploadSession::Status UploadSession::handle_entry(const wire::Header& header, uint32_t flags) {
  const uint64_t page_size = store_->page_size();
  std::string what = std::string(wire::command_name(header.command())) + " dst_id " + hex(header.dst_id) +
                     " vaddr " + hex(header.vaddr) + " nr_pages " + std::to_string(header.nr_pages) + " flags " +
                     flag_names(flags);
  PageKey key;
  if (!key_from_dst_id(header.dst_id, &key)) {
    return fail(what + ": unknown pagemap type " + std::to_string(header.dst_id & wire::PS_TYPE_MASK) + kNothingKept);
  }
  if (!has_open_ || key != open_key_) {
    // "Deprecated IO w/o open": an entry for another pagemap opens it, without a reply (§1.5 step 4).
    Status status = open(header.dst_id, "implicit open by ADD", &key);
    if (status != Status::kOpen) return status;
    stats_.implicit_opens++;
  }
  if (header.nr_pages == 0) return fail(what + ": nr_pages is 0" + kNothingKept);
  if (header.nr_pages > limits_.max_entry_pages) {
    return fail(what + ": more than the limit of " + std::to_string(limits_.max_entry_pages) + " pages per entry" +
                kNothingKept);
  }
  if (header.vaddr % page_size != 0) return fail(what + ": vaddr is not page-aligned" + kNothingKept);
  int err = store_->begin_entry(key, header.vaddr, header.nr_pages, flags);
  if (err == kStoreCapExceeded) {
    const MemoryBudget& budget = store_->budget();
    return fail(what + ": the staging memory cap of " + std::to_string(budget.limit()) + " bytes (" +
                std::to_string(budget.used()) + " in use) would be exceeded; the dump fails and CRIU resumes " +
                "the tasks" + kNothingKept);
  }
  if (err) return fail(what + ": " + store_error_text(err) + kNothingKept);
  stats_.entries++;
  if (flags & wire::PE_PRESENT) {
    stats_.pages_with_data += header.nr_pages;
    phase_ = Phase::kPayload;
    entry_what_ = std::move(what);
    entry_bytes_ = header.nr_pages * page_size;
  } else {
    stats_.pages_without_data += header.nr_pages;  // PE_PARENT hole or PE_LAZY without data: metadata only
  }
  return Status::kOpen;
}

UploadSession::Status UploadSession::read_payload() {
  ssize_t n;
  if (transport_->zero_copy()) {
    n = store_->receive(transport_->fd(), store_->pending_bytes());
  } else {
    // Never more than the payload still expected: the next header stays in the session (§1.9).
    if (copy_.empty()) copy_.resize(256 * 1024);
    const size_t want = static_cast<size_t>(std::min<uint64_t>(copy_.size(), store_->pending_bytes()));
    n = transport_->recv(copy_.data(), want);
    if (n < 0 && n != -EAGAIN) return fail_socket("receive", static_cast<int>(-n));
    if (n > 0) {
      ssize_t stored = store_->receive_bytes(copy_.data(), static_cast<size_t>(n));
      if (stored != n) {
        return fail(entry_what_ + ": storing the pages failed: " +
                    store_error_text(stored < 0 ? static_cast<int>(stored) : -EIO) + kNothingKept);
      }
    }
  }
  if (n > 0) {
    stats_.bytes_in += static_cast<uint64_t>(n);
    if (store_->pending_bytes() == 0) phase_ = Phase::kHeader;
    return Status::kOpen;
  }
  if (n == 0) {
    eof_ = true;
    const uint64_t got = entry_bytes_ - store_->pending_bytes();
    return fail(entry_what_ + ": the dump disconnected after " + std::to_string(got) + " of " +
                std::to_string(entry_bytes_) + " payload bytes" + kNothingKept);
  }
  if (n == -EAGAIN || n == -EINTR) return Status::kOpen;
  if (connection_broke(static_cast<int>(-n))) return fail_socket("receive", static_cast<int>(-n));
  return fail(entry_what_ + ": storing the pages failed: " + store_error_text(static_cast<int>(n)) + kNothingKept);
}

UploadSession::Status UploadSession::read_after_close() {
  uint8_t buf[64];
  ssize_t n = transport_->recv(buf, sizeof buf);
  if (n < 0) {
    if (n == -EAGAIN) return Status::kOpen;
    const int err = static_cast<int>(-n);
    if (transport_->error().empty() && status_queued_ && out_sent_ == out_len_ && connection_broke(err)) {
      // The CLOSE status has left. CRIU's dump reads it, reports success and kills the tasks, then closes; a
      // reset now may come after all that (a network failure, the dump's host going down). Dropping the upload
      // could lose the process, keeping it at worst holds a checkpoint of tasks that run on: keep it.
      note_ = std::string("the dump's connection broke after lazyd had sent its CLOSE status (") + strerror(err) +
              "): the dump may have succeeded and ended the tasks, so the upload is kept";
      eof_ = true;
      return Status::kOpen;  // settle() commits
    }
    return fail_socket("receive after CLOSE", err);
  }
  if (n == 0) {
    eof_ = true;
    return Status::kOpen;
  }
  stats_.bytes_in += static_cast<uint64_t>(n);
  // Only EOF may follow CLOSE — except the 8 trailing zero bytes of a 32-byte CLOSE that was answered before
  // its format was known.
  for (ssize_t i = 0; i < n; i++) {
    if (close_slack_ == 0 || buf[i] != 0) {
      return fail(std::string("data after CLOSE: the client must close the connection after the CLOSE reply") +
                  kNothingKept);
    }
    close_slack_--;
  }
  return Status::kOpen;
}

UploadSession::Status UploadSession::reply(const void* data, size_t len) {
  if (out_len_ + len > sizeof out_) {
    return fail("the client does not read the replies (" + std::to_string(out_len_ - out_sent_) + " bytes unread)");
  }
  memcpy(out_ + out_len_, data, len);
  out_len_ += len;
  return flush();  // the client waits for it (OPEN2, PARENT, CLOSE): send at once
}

UploadSession::Status UploadSession::flush() {
  while (out_sent_ < out_len_) {
    ssize_t n = transport_->send(out_ + out_sent_, out_len_ - out_sent_);
    if (n < 0) {
      if (n == -EAGAIN) return Status::kOpen;
      return fail_socket("send", static_cast<int>(-n));
    }
    out_sent_ += static_cast<size_t>(n);
  }
  out_len_ = out_sent_ = 0;
  return Status::kOpen;
}

}  // namespace lazyd
