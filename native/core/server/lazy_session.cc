#include "server/lazy_session.h"

#include "util/text.h"
#include "wire/link_ext.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

namespace lazyd {

namespace {

// Page bytes read per step under TLS: 16 records of the largest size.
constexpr size_t kCopyChunk = 256 * 1024;

// A TLS ClientHello reached a plain server: say so instead of "unknown command".
std::string tls_hint(const uint8_t* head, size_t len, bool tls) {
  if (tls || !looks_like_tls(head, len)) return "";
  return " (the bytes are a TLS ClientHello: the peer runs with --tls; start lazyd with --tls too)";
}

}  // namespace

LazySession::LazySession(int fd, const PageIndex& index, const SessionLimits& limits, const StagedLookup* staged)
    : LazySession(std::make_unique<Transport>(fd), index, limits, staged) {}

LazySession::LazySession(std::unique_ptr<Transport> transport, const PageIndex& index, const SessionLimits& limits,
                         const StagedLookup* staged)
    : Session(std::move(transport), limits.format), index_(index), staged_(staged), limits_(limits) {}

LazySession::~LazySession() = default;

LazySession::Status LazySession::fail_io(const char* what, ssize_t err) {
  const std::string tls_error = transport_->error();
  if (!tls_error.empty()) return fail(tls_error);
  return fail(std::string(what) + ": " + strerror(static_cast<int>(-err)));
}

LazySession::Status LazySession::fail(std::string message) {
  error_ = std::move(message);
  return Status::kFailed;
}

// Done once the peer has hung up (after CLOSE, or at a header boundary) and every reply has left. Bytes left
// in in_ at EOF while the queue has room are a partial header: pump() has parsed every complete one.
LazySession::Status LazySession::settle() {
  if (eof_ && in_len_ != 0 && has_room() && !checksums_spent() && !(close_seen_ && in_len_ <= close_slack_)) {
    return fail("truncated header: the peer closed the connection after " + std::to_string(in_len_) +
                " bytes of a header");
  }
  if (replies_.empty() && !failure_after_replies_.empty()) return fail(failure_after_replies_);
  if (replies_.empty() && !waiting_ && (eof_ || stop_reading_)) return Status::kDone;
  return Status::kOpen;
}

LazySession::Status LazySession::drain() {
  stop_reading_ = true;
  return settle();
}

SessionTotals LazySession::totals() const {
  SessionTotals totals;
  totals.gets = stats_.gets;
  totals.pages = stats_.pages;
  totals.bytes_out = stats_.bytes_out;
  totals.bytes_in = stats_.bytes_in;
  totals.in_flight = replies_.size();
  return totals;
}

// Parses the requests waiting in in_ and sends; again while sending made room and requests still wait (they
// may have waited for room: --max-inflight / --max-session-bytes), so none is left behind with no event to come.
LazySession::Status LazySession::pump() {
  for (;;) {
    Status status = handle_requests();
    if (status != Status::kOpen) return status;
    const size_t queued = replies_.size();
    status = flush();
    if (status != Status::kOpen) return status;
    if (replies_.size() == queued || in_len_ == 0 || !has_room()) return Status::kOpen;
  }
}

LazySession::Status LazySession::on_readable() {
  new_slice();
  Status status = pump();
  // Not while this slice's checksums are spent: the GETs read would wait unparsed (the next pass reads them).
  while (status == Status::kOpen && wants_read() && !checksums_spent() && in_len_ < sizeof in_) {
    ssize_t n = transport_->recv(in_ + in_len_, sizeof in_ - in_len_);
    if (n < 0) {
      if (n == -EAGAIN) break;
      return fail_io("receive failed", n);
    }
    if (n == 0) {
      eof_ = true;
      break;
    }
    in_len_ += static_cast<size_t>(n);
    stats_.bytes_in += static_cast<uint64_t>(n);
    status = pump();
  }
  return status == Status::kOpen ? settle() : status;
}

LazySession::Status LazySession::on_writable() {
  new_slice();
  Status status = pump();
  return status == Status::kOpen ? settle() : status;
}

LazySession::Status LazySession::handle_requests() {
  size_t used = 0;
  Status status = Status::kOpen;
  if (waiting_) {
    // Try the waiting GET again: served, waiting still, or refused (the relay failed).
    const bool seen = wait_seen_;
    waiting_ = false;
    retrying_ = true;
    status = handle_get(waiting_get_);
    retrying_ = false;
    wait_seen_ = waiting_ && seen;  // the same wait goes on: the server knows of it already
    if (status != Status::kOpen || waiting_) return status;
  }
  while (status == Status::kOpen && has_room() && !checksums_spent()) {
    const uint8_t* head = in_ + used;
    const size_t available = in_len_ - used;
    if (close_seen_) {
      // After CLOSE only EOF may follow — except the 8 trailing zero bytes of a 32-byte CLOSE that was
      // answered before its format was known.
      size_t i = 0;
      while (i < available && i < close_slack_ && head[i] == 0) i++;
      if (i != available) {
        status = fail("data after CLOSE: the peer must close the connection after the CLOSE reply");
        break;
      }
      close_slack_ -= i;
      used += i;
      break;
    }
    if (first_request_ && available >= 4 && wire::starts_with_hello(head, available)) {
      // lazyd's HELLO (§7): only a lazyd client that read this server's lazyd-link.json sends it.
      if (available < wire::kHelloSize) break;
      used += wire::kHelloSize;
      first_request_ = false;
      status = handle_hello(head);
      if (!failure_after_replies_.empty()) {
        used = in_len_;  // refused: the requests behind the HELLO are dropped unread
        break;
      }
      continue;
    }
    if (available < wire::HEADER_SIZE_V24) break;
    first_request_ = false;
    wire::Format format = format_;
    if (format == wire::Format::Unknown) {
      format = wire::detect(head, available, index_.page_size());
      const uint32_t command = wire::decode(wire::Format::V24, head).command();
      if (format == wire::Format::Unknown) {
        if (command == wire::PS_IOV_CLOSE || command == wire::PS_IOV_FORCE_CLOSE) {
          // Both layouts get the same 4-byte reply; the 32-byte form has 8 more bytes still to come.
          used += wire::HEADER_SIZE_V24;
          close_slack_ = wire::HEADER_SIZE_V32 - wire::HEADER_SIZE_V24;
          status = queue_close_status();
          continue;
        }
        status = fail(std::string("malformed first header (command ") + wire::command_name(command) +
                      " " + hex(command) + "): neither the 24-byte (CRIU <= 4.1) nor the 32-byte (CRIU >= 4.2) " +
                      "layout fits; pass --criu-abi if the peer is a CRIU page-server client" +
                      tls_hint(head, available, transport_->tls()));
        break;
      }
      format_ = format;
    }
    const size_t head_size = wire::header_size(format);
    if (available < head_size) break;
    const wire::Header header = wire::decode(format, head);
    used += head_size;
    switch (header.command()) {
      case wire::PS_IOV_GET:
        status = handle_get(header);
        break;
      case wire::PS_IOV_CLOSE:
      case wire::PS_IOV_FORCE_CLOSE:
        status = queue_close_status();
        break;
      case wire::PS_IOV_OPEN:
      case wire::PS_IOV_OPEN2:
      case wire::PS_IOV_PARENT:
      case wire::PS_IOV_ADD:
      case wire::PS_IOV_ADD_F:
      case wire::PS_IOV_HOLE:
        status = fail(std::string("upload command ") + wire::command_name(header.command()) +
                      (stats_.gets || close_seen_ || staged_ == nullptr
                           ? " on a lazy page server: this lazyd serves the images of -D; it does not accept uploads"
                           : " in a lazy-fetch session: a connection either uploads or fetches"));
        break;
      default:
        status = fail("unknown command " + hex(header.cmd) + ": not a CRIU page-server request" +
                      tls_hint(head, head_size, transport_->tls()));
        break;
    }
  }
  memmove(in_, in_ + used, in_len_ - used);
  in_len_ -= used;
  return status;
}

LazySession::Status LazySession::refuse_link(std::string message) {
  stats_.link_refused = true;
  return fail(std::move(message));
}

// The HELLO answer goes out in the reply queue like any other, so it keeps its place ahead of the GETs' replies.
LazySession::Status LazySession::handle_hello(const uint8_t* head) {
  wire::Hello hello;
  wire::decode_hello(head, &hello);
  stats_.hello = true;
  wire::HelloReply answer;
  std::shared_ptr<const StagedCheckpoint> named;
  if (hello.version != wire::kLinkVersion) {
    answer.status = -EPROTONOSUPPORT;
  } else if (staged_ == nullptr || !(named = staged_->find_token(hello.token))) {
    answer.status = -EACCES;
  } else {
    answer.features = hello.features & wire::kKnownFeatures;
    answer.checkpoint = named->id;
    checksums_ = (answer.features & wire::kFeatureChecksum) != 0;
    stats_.priority = (answer.features & wire::kFeaturePriority) != 0;
    if (stats_.priority) new_slice();  // its replies are never held back
    stats_.resume = (answer.features & wire::kFeatureResume) != 0;
    bound_ = named;
    token_bound_ = true;
  }
  Reply reply;
  wire::encode_hello_reply(answer, reply.head);
  reply.head_len = wire::kHelloReplySize;
  queue(std::move(reply));
  // A refused HELLO: the reply says why, nothing after it is read, and the session fails once it is sent.
  if (answer.status == -EPROTONOSUPPORT) {
    stop_reading_ = true;
    stats_.link_refused = true;
    failure_after_replies_ = "HELLO of link version " + std::to_string(hello.version) + ": this lazyd speaks version " +
                             std::to_string(wire::kLinkVersion) + " (run the same lazyd release on both ends)";
  } else if (answer.status != 0) {
    stop_reading_ = true;
    stats_.link_refused = true;
    failure_after_replies_ =
        "HELLO with a link token no staged checkpoint has (released, or another server's lazyd-link.json); session refused";
  }
  return Status::kOpen;
}

LazySession::Status LazySession::handle_get(const wire::Header& header) {
  const uint64_t page_size = index_.page_size();
  const std::string what = "GET pid " + std::to_string(header.dst_id) + " vaddr " + hex(header.vaddr) + " nr_pages " +
                           std::to_string(header.nr_pages);
  if (limits_.require_link_token && !token_bound_) {
    return refuse_link(what + ": this page server requires a link token (--require-link-token), and the client "
                       "sent no HELLO: restore with `lazyd lazy-pages` from the images holding lazyd-link.json");
  }
  if (header.nr_pages == 0) return fail(what + ": nr_pages is 0");
  if (header.nr_pages > limits_.max_request_pages) {
    return fail(what + ": more than the limit of " + std::to_string(limits_.max_request_pages) +
                " pages per request (--max-request-pages)");
  }
  if (header.vaddr % page_size != 0) return fail(what + ": vaddr is not page-aligned");

  // Staged checkpoints first (see StagedLookup), then the images of -D.
  std::shared_ptr<const StagedCheckpoint> staged;
  PageKey key = 0;
  if (staged_ != nullptr && key_from_get_pid(header.dst_id, &key)) {
    if (bound_ && bound_->store->entries(key) != nullptr) {
      staged = bound_;  // still served after a release: the restore in progress keeps its checkpoint
    } else {
      staged = staged_->find_pid(header.dst_id);
      if (staged && bound_ && staged != bound_ && !token_bound_) {  // token-bound: refused below
        return fail(what + ": the pid belongs to staged checkpoint #" + std::to_string(staged->id) +
                    ", but this session fetches from checkpoint #" + std::to_string(bound_->id) +
                    " (one restore, one checkpoint)");
      }
    }
  }
  if (token_bound_ && staged != bound_) {
    return refuse_link(what + ": the session's link token names staged checkpoint #" + std::to_string(bound_->id) +
                       ", which holds no such pid (one token, one checkpoint)");
  }
  if (staged) {
    if (staged->store->page_size() != page_size) return fail(what + ": staged with another page size");
    StoreSpan store_span;
    LookupResult found = staged->store->lookup(key, header.vaddr, header.nr_pages, &store_span, /*lazy_only=*/true);
    if (found != LookupResult::kFound) {
      return fail(what + " (staged checkpoint #" + std::to_string(staged->id) + "): " + lookup_result_text(found));
    }
    bound_ = staged;
    // A relayed checkpoint being pulled: serve the pages held from the first on (a short reply, as CRIU clamps
    // at its iovec end, §1.6), or wait for the first one; never answer a page it does not hold.
    const uint64_t ready = staged->store->pages_ready(store_span);
    if (ready == 0) {
      const std::string missing = staged->store->missing_reason();
      if (!missing.empty()) return fail(what + " (staged checkpoint #" + std::to_string(staged->id) + "): " + missing);
      if (!retrying_) stats_.waits++;
      waiting_ = true;
      waiting_get_ = header;
      waiting_span_ = store_span;
      return Status::kOpen;
    }
    store_span.nr_pages = ready;
    store_span.bytes = ready * page_size;
    Reply reply = get_reply(header, store_span.nr_pages);
    // A sealed memfd's bytes never change: checksummed in its mapping now, sent zero-copy (or gathered) later.
    const bool gather = transport_->zero_copy() && store_span.bytes <= kGatherMaxBytes;
    if (const uint8_t* bytes = reply.checksums.active() || gather ? staged->store->view(store_span) : nullptr) {
      if (reply.checksums.active()) {
        reply.checksums.feed(bytes, static_cast<size_t>(store_span.bytes));
        checksum_left_ -= std::min(checksum_left_, store_span.bytes);
      }
      if (gather) reply.view = bytes;
    }
    reply.store = staged->store;
    reply.span = store_span;
    queue(std::move(reply));
    stats_.gets++;
    stats_.pages += store_span.nr_pages;
    return Status::kOpen;
  }

  PageSpan span;
  LookupResult found = index_.lookup(header.dst_id, header.vaddr, header.nr_pages, &span);
  if (found != LookupResult::kFound) return fail(what + ": " + lookup_result_text(found));

  Reply reply = get_reply(header, span.nr_pages);
  reply.file_fd = span.fd;
  reply.file_offset = span.file_offset;
  reply.file_left = span.nr_pages * page_size;
  queue(std::move(reply));
  stats_.gets++;
  stats_.pages += span.nr_pages;
  return Status::kOpen;
}

LazySession::Reply LazySession::get_reply(const wire::Header& header, uint64_t nr_pages) {
  Reply reply;
  wire::Header answer;
  answer.cmd = wire::GET_REPLY_CMD;
  answer.pad = header.pad;  // CRIU's server answers in the request's own struct, so 4.2 replies echo the padding
  answer.nr_pages = nr_pages;
  answer.vaddr = header.vaddr;
  answer.dst_id = header.dst_id;
  wire::encode(format_, answer, reply.head);
  reply.head_len = wire::header_size(format_);
  if (checksums_) reply.checksums.start(index_.page_size(), nr_pages);
  return reply;
}

LazySession::Status LazySession::queue_close_status() {
  Reply reply;
  const int32_t status = 0;  // CRIU always answers CLOSE with 0 (docs/protocol.md §1.3)
  memcpy(reply.head, &status, sizeof status);
  reply.head_len = sizeof status;
  queue(std::move(reply));
  close_seen_ = true;
  stats_.closed_by_request = true;
  return Status::kOpen;
}

void LazySession::queue(Reply reply) {
  queued_bytes_ += reply.head_len + reply.file_left + (reply.store ? reply.span.bytes : 0) + reply.checksums.trailer().size();
  replies_.push_back(std::move(reply));
}

LazySession::Status LazySession::flush() {
  while (!replies_.empty()) {
    if (slice_spent()) return Status::kOpen;  // the rest on the next pass (level-triggered EPOLLOUT)
    Reply& reply = replies_.front();
    if (reply.view && reply.head_sent == 0) {
      bool sent = false;
      Status status = send_gathered(reply, &sent);
      if (status != Status::kOpen) return status;
      if (sent) {
        replies_.pop_front();
        continue;
      }
      if (reply.head_sent == 0) return Status::kOpen;  // the socket is full
    }
    if (reply.head_sent < reply.head_len) {
      // MSG_MORE keeps the header with the page bytes that follow; the last sendfile segment goes out without
      // it, so with TCP_NODELAY a reply leaves as soon as it is complete (no cork timer, unlike CRIU's 0.2 s).
      const int more = (reply.file_left || (reply.store && reply.span.bytes)) ? MSG_MORE : 0;
      // Under TLS the header is one record and the page bytes follow in records of their own (§1.9).
      ssize_t n = transport_->send(reply.head + reply.head_sent, reply.head_len - reply.head_sent, more);
      if (n < 0) {
        if (n == -EAGAIN) return Status::kOpen;
        return fail_io("send failed", n);
      }
      reply.head_sent += static_cast<size_t>(n);
      stats_.bytes_out += static_cast<uint64_t>(n);
      queued_bytes_ -= static_cast<uint64_t>(n);
      spend(static_cast<uint64_t>(n));
      continue;
    }
    // Checksums not computed yet (the bytes are read here, not in a mapping): they are computed as the bytes are
    // copied out to be sent. Bytes copied out and not yet sent are this reply's: the last chunk completes the
    // checksums before the socket has taken it, and the zero-copy path would then send the trailer ahead of it.
    if (copy_off_ < copy_len_ || !transport_->zero_copy() || (reply.checksums.active() && !reply.checksums.complete())) {
      if (copy_off_ < copy_len_ || reply.file_left || (reply.store && reply.store_done < reply.span.bytes)) {
        Status status = flush_copied(reply);
        if (status != Status::kOpen || copy_off_ < copy_len_) return status;  // failed, or the socket is full
        continue;
      }
      bool sent = false;
      Status status = send_trailer(reply, &sent);
      if (status != Status::kOpen || !sent) return status;
      replies_.pop_front();
      continue;
    }
    if (reply.store && reply.store_done < reply.span.bytes) {
      StoreSpan part = reply.span;  // at most the slice's worth (a store sends to the end of the span it is given)
      // (A priority connection's slice is unlimited: UINT64_MAX, which must not wrap around here.)
      part.bytes = reply.store_done + std::min<uint64_t>(reply.span.bytes - reply.store_done, std::max<uint64_t>(slice_left_, 1));
      ssize_t n = reply.store->send(part, reply.store_done, fd(), scratch_);
      if (n == -EAGAIN || n == -EWOULDBLOCK) return Status::kOpen;
      if (n == -EINTR) continue;
      if (n < 0) return fail(std::string("sending staged page data failed: ") + store_error_text(static_cast<int>(n)));
      if (n == 0) return fail("the staged store sent nothing: no page is sent short");
      reply.store_done += static_cast<uint64_t>(n);
      stats_.bytes_out += static_cast<uint64_t>(n);
      queued_bytes_ -= static_cast<uint64_t>(n);
      spend(static_cast<uint64_t>(n));
      continue;
    }
    if (reply.file_left) {
      off_t offset = static_cast<off_t>(reply.file_offset);
      ssize_t n = sendfile(fd(), reply.file_fd, &offset, std::min<uint64_t>(reply.file_left, std::max<uint64_t>(slice_left_, 1)));
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::kOpen;
        return fail(std::string("sending page data failed: ") + strerror(errno));
      }
      if (n == 0) {
        return fail("the pages image ended " + std::to_string(reply.file_left) +
                    " bytes early (truncated or changed since start): no page is sent short");
      }
      reply.file_offset += static_cast<uint64_t>(n);
      reply.file_left -= static_cast<uint64_t>(n);
      stats_.bytes_out += static_cast<uint64_t>(n);
      queued_bytes_ -= static_cast<uint64_t>(n);
      spend(static_cast<uint64_t>(n));
      continue;
    }
    bool sent = false;
    Status status = send_trailer(reply, &sent);
    if (status != Status::kOpen || !sent) return status;
    replies_.pop_front();
  }
  return Status::kOpen;
}

LazySession::Status LazySession::send_gathered(Reply& reply, bool* sent) {
  const std::vector<uint8_t>& trailer = reply.checksums.trailer();
  if (reply.checksums.active() && !reply.checksums.complete()) {
    return fail("the page checksums of a reply are short: no reply is sent short");
  }
  iovec iov[3] = {{reply.head, reply.head_len},
                  {const_cast<uint8_t*>(reply.view), static_cast<size_t>(reply.span.bytes)},
                  {const_cast<uint8_t*>(trailer.data()), trailer.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = trailer.empty() ? 2 : 3;
  ssize_t n;
  do {
    n = sendmsg(fd(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::kOpen;
    return fail_io("send failed", -errno);
  }
  const uint64_t taken = static_cast<uint64_t>(n);
  stats_.bytes_out += taken;
  queued_bytes_ -= taken;
  spend(taken);
  // Where the socket stopped: the rest goes out by the ordinary path, part by part.
  uint64_t left = taken;
  reply.head_sent = static_cast<size_t>(std::min<uint64_t>(left, reply.head_len));
  left -= reply.head_sent;
  reply.store_done = std::min<uint64_t>(left, reply.span.bytes);
  left -= reply.store_done;
  reply.trailer_sent = static_cast<size_t>(left);
  reply.view = nullptr;
  *sent = reply.head_sent == reply.head_len && reply.store_done == reply.span.bytes && reply.trailer_sent == trailer.size();
  return Status::kOpen;
}

LazySession::Status LazySession::send_trailer(Reply& reply, bool* sent) {
  const std::vector<uint8_t>& trailer = reply.checksums.trailer();
  while (reply.trailer_sent < trailer.size()) {
    if (!reply.checksums.complete()) return fail("the page checksums of a reply are short: no reply is sent short");
    ssize_t n = transport_->send(trailer.data() + reply.trailer_sent, trailer.size() - reply.trailer_sent);
    if (n < 0) {
      if (n == -EAGAIN) return Status::kOpen;
      return fail_io("sending the page checksums failed", n);
    }
    reply.trailer_sent += static_cast<size_t>(n);
    stats_.bytes_out += static_cast<uint64_t>(n);
    queued_bytes_ -= static_cast<uint64_t>(n);
  }
  *sent = true;
  return Status::kOpen;
}

LazySession::Status LazySession::flush_copied(Reply& reply) {
  if (copy_.empty()) copy_.resize(kCopyChunk);
  for (;;) {
    if (copy_off_ == copy_len_) {
      if (slice_spent()) return Status::kOpen;  // flush() stops there too: the next chunk on the next pass
      copy_off_ = copy_len_ = 0;
      if (reply.store && reply.store_done < reply.span.bytes) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>(copy_.size(), reply.span.bytes - reply.store_done));
        ssize_t n = reply.store->copy_out(reply.span, reply.store_done, copy_.data(), want, scratch_);
        if (n == -EINTR) continue;
        if (n < 0) return fail(std::string("reading staged page data failed: ") + store_error_text(static_cast<int>(n)));
        if (n == 0) return fail("the staged store returned nothing: no page is sent short");
        reply.store_done += static_cast<uint64_t>(n);
        copy_len_ = static_cast<size_t>(n);
      } else if (reply.file_left) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>(copy_.size(), reply.file_left));
        ssize_t n = pread(reply.file_fd, copy_.data(), want, static_cast<off_t>(reply.file_offset));
        if (n < 0) {
          if (errno == EINTR) continue;
          return fail(std::string("reading page data failed: ") + strerror(errno));
        }
        if (n == 0) {
          return fail("the pages image ended " + std::to_string(reply.file_left) +
                      " bytes early (truncated or changed since start): no page is sent short");
        }
        reply.file_offset += static_cast<uint64_t>(n);
        reply.file_left -= static_cast<uint64_t>(n);
        copy_len_ = static_cast<size_t>(n);
      } else {
        return Status::kOpen;  // all of this reply's bytes are sent
      }
      if (reply.checksums.active()) reply.checksums.feed(copy_.data(), copy_len_);
    }
    // A trailer follows the last page bytes: keep them in one segment with it.
    ssize_t n = transport_->send(copy_.data() + copy_off_, copy_len_ - copy_off_, reply.checksums.active() ? MSG_MORE : 0);
    if (n < 0) {
      if (n == -EAGAIN) return Status::kOpen;
      return fail_io("sending page data failed", n);
    }
    copy_off_ += static_cast<size_t>(n);
    stats_.bytes_out += static_cast<uint64_t>(n);
    queued_bytes_ -= static_cast<uint64_t>(n);  // else --max-session-bytes would fill up and stop the session
    spend(static_cast<uint64_t>(n));
  }
}

}  // namespace lazyd
