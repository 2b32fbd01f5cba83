#include "lazy/page_client.h"

#include "net/net.h"
#include "util/clock.h"
#include "util/text.h"
#include "wire/page_checksums.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace lazyd {
namespace {

// Waits for fd to become ready for `events`, up to *left_ms (< 0: forever), which is decreased.
int wait_fd(int fd, short events, int* left_ms) {
  for (;;) {
    const uint64_t t0 = now_ns();
    pollfd pfd{fd, events, 0};
    int rc = poll(&pfd, 1, *left_ms);
    if (*left_ms >= 0) {
      const int spent = static_cast<int>((now_ns() - t0) / 1000000);
      *left_ms = spent >= *left_ms ? 0 : *left_ms - spent;
    }
    if (rc < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (rc == 0) return -ETIMEDOUT;
    return 0;
  }
}

}  // namespace

// ---- PageClient ----

PageClient::PageClient(wire::Format format, uint64_t page_size) : format_(format), page_size_(page_size) {}

PageClient::~PageClient() {
  const bool tls = tls_ != nullptr;
  tls_.reset();
  if (tls) net::close_gently(fd_);  // a server we refused still gets our alert
  else if (fd_ >= 0) ::close(fd_);
}

int PageClient::start_tls(std::shared_ptr<const TlsContext> context, const std::string& peer) {
  if (fd_ < 0) return fail(-ENOTCONN, "page server not connected");
  std::string error;
  tls_ = TlsSession::create(std::move(context), fd_, TlsSession::Role::kClient, &error);
  if (!tls_) return fail(-EPROTO, error);
  tls_peer_ = peer;
  return 0;
}

int PageClient::tls_handshake() {
  if (!tls_) return fail(-ENOTCONN, "TLS not started");
  const int rc = tls_->handshake();
  if (rc == 0 || rc == -EAGAIN) return rc;
  return fail(-EPROTO, "TLS handshake with the page server " + tls_peer_ + " failed: " + tls_->error());
}

int PageClient::tls_timed_out(int timeout_ms) {
  return fail(-ETIMEDOUT, "TLS handshake with the page server " + tls_peer_ + " did not complete within " +
                              std::to_string(timeout_ms) + " ms: does it run with --tls?");
}

ssize_t PageClient::io_recv(void* buf, size_t len) {
  if (tls_) return tls_->recv(buf, len);
  for (;;) {
    ssize_t n = recv(fd_, buf, len, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

ssize_t PageClient::io_send(const void* buf, size_t len) {
  if (tls_) return tls_->send(buf, len);
  for (;;) {
    ssize_t n = send(fd_, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

std::string PageClient::closed_hint() const {
  if (bytes_received_ != 0 || reconnected_) return "";
  // Nothing ever came back: the usual cause is a TLS mismatch (criu checks certificates after the handshake and
  // just closes).
  return tls_ ? " before its first reply: it may have refused our certificate (see its log)"
              : " before its first reply: if it runs with --tls, pass --tls too";
}

int PageClient::fail(int err, std::string message) {
  if (error_.empty()) error_ = std::move(message);
  return err;
}

int PageClient::fail_lost(int err, std::string message) {
  if (error_.empty()) link_lost_ = true;
  return fail(err, std::move(message));
}

void PageClient::lost(std::string why) { fail_lost(-ETIMEDOUT, std::move(why)); }

std::vector<PageRequest> PageClient::take_unanswered() {
  std::vector<PageRequest> again;
  for (const PageRequest& request : fifo_) {
    auto refetch = refetching_.find(request.cookie);
    again.push_back(refetch == refetching_.end() ? request : refetch->second.original);
  }
  fifo_.clear();
  refetching_.clear();
  in_payload_ = in_trailer_ = false;
  head_len_ = 0;
  return again;
}

int PageClient::connected_socket() {
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  net::set_reset_on_close(fd_, true);
  return 0;
}

int PageClient::connect_start(const std::string& host, uint16_t port) {
  if (fd_ >= 0) return -EISCONN;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  const int gai = getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
  if (gai != 0) return fail_lost(-EHOSTUNREACH, "cannot resolve page server " + host + ": " + gai_strerror(gai));
  int fd = socket(list->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int err = errno;
    freeaddrinfo(list);
    return fail(-err, std::string("cannot create a socket: ") + strerror(err));
  }
  const int rc = ::connect(fd, list->ai_addr, list->ai_addrlen);
  const int err = errno;
  freeaddrinfo(list);
  if (rc < 0 && err != EINPROGRESS) {
    ::close(fd);
    return fail_lost(-err, "cannot connect to page server " + host + ":" + service + ": " + strerror(err));
  }
  fd_ = fd;
  tls_peer_ = host + ":" + service;
  if (rc == 0) return connected_socket();
  return -EINPROGRESS;
}

int PageClient::connect_finish() {
  if (fd_ < 0) return -ENOTCONN;
  int so_error = 0;
  socklen_t len = sizeof so_error;
  if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &so_error, &len) < 0) so_error = errno;
  if (so_error != 0) {
    return fail_lost(-so_error, "cannot connect to page server " + tls_peer_ + ": " + strerror(so_error));
  }
  return connected_socket();
}

int PageClient::connect(const std::string& host, uint16_t port, int timeout_ms) {
  if (fd_ >= 0) return -EISCONN;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  int gai = getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
  if (gai != 0) return fail(-EHOSTUNREACH, "cannot resolve page server " + host + ": " + gai_strerror(gai));

  int left = timeout_ms;
  int last_err = ECONNREFUSED;
  for (addrinfo* ai = list; ai && fd_ < 0; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      last_err = errno;
      continue;
    }
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc < 0 && errno == EINPROGRESS) {
      rc = wait_fd(fd, POLLOUT, &left);
      if (rc == 0) {
        int so_error = 0;
        socklen_t len = sizeof so_error;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
        if (so_error != 0) {
          errno = so_error;
          rc = -1;
        }
      } else {
        errno = -rc;
        rc = -1;
      }
    }
    if (rc < 0) {
      last_err = errno;
      ::close(fd);
      if (last_err == ETIMEDOUT) break;
      continue;
    }
    fd_ = fd;
  }
  freeaddrinfo(list);
  if (fd_ < 0) {
    return fail(-last_err, "cannot connect to page server " + host + ":" + service + ": " + strerror(last_err));
  }
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  net::set_reset_on_close(fd_, true);
  return 0;
}

int PageClient::adopt(int fd) {
  if (fd_ >= 0) return -EISCONN;
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // fails harmlessly on a non-TCP socket
  net::set_reset_on_close(fd, true);
  fd_ = fd;
  return 0;
}

int PageClient::submit(const PageRequest& request) {
  const int rc = queue(request);
  return rc < 0 ? rc : flush();
}

int PageClient::queue(const PageRequest& request) {
  const int rc = check_request(request);
  if (rc < 0) return rc;
  append_get(request);
  return 0;
}

int PageClient::check_request(const PageRequest& request) {
  if (!error_.empty()) return -EPIPE;
  if (fd_ < 0) return fail(-ENOTCONN, "page server not connected");
  if (format_ != wire::Format::V24 && format_ != wire::Format::V32) return fail(-EINVAL, "no wire format chosen");
  if (request.nr_pages == 0 || (request.img_vaddr & (page_size_ - 1)) != 0 || (!request.buf && !request.sink)) {
    return fail(-EINVAL, "invalid page request at " + hex(request.img_vaddr));
  }
  if (format_ == wire::Format::V24 && request.nr_pages > UINT32_MAX) {
    return fail(-EOVERFLOW, "GET too large for the 24-byte format");
  }
  return 0;
}

void PageClient::append_get(const PageRequest& request) {
  wire::Header h;
  h.cmd = wire::PS_IOV_GET;
  h.nr_pages = request.nr_pages;
  h.vaddr = request.img_vaddr;
  h.dst_id = request.pid;
  uint8_t bytes[wire::HEADER_SIZE_MAX] = {};  // padding of the 32-byte form goes out as zeros
  wire::encode(format_, h, bytes);
  if (out_off_ == out_.size()) {
    out_.clear();
    out_off_ = 0;
  }
  out_.insert(out_.end(), bytes, bytes + wire::header_size(format_));
  if (fifo_.empty()) last_progress_ns_ = now_ns();  // the stall clock starts with the first outstanding request
  fifo_.push_back(request);
}

void PageClient::open_with_hello(const wire::Hello& hello) {
  hello_out_.resize(wire::kHelloSize);
  wire::encode_hello(hello, hello_out_.data());
  hello_features_ = hello.features;
  hello_off_ = 0;
  hello_awaiting_ = true;
  hello_got_ = 0;
}

// The HELLO reply (§7) is complete in hello_in_: 0 when granted, else the client fails with why.
int PageClient::hello_answered() {
  hello_awaiting_ = false;
  wire::HelloReply reply;
  if (!wire::decode_hello_reply(hello_in_, &reply)) {
    return fail(-EPROTO, "the page server answered the lazyd HELLO with something else: lazyd-link.json in the "
                         "images names a lazyd page server, but this one is not (restore with --link stock)");
  }
  if (reply.status == -EACCES) {
    return fail(-EACCES, "the page server refused the link token of lazyd-link.json: the checkpoint was released "
                         "there, or the images come from another page server (copy them again from the source; "
                         "a page server serving these images from disk: restore with --link stock)");
  }
  if (reply.status != 0) {
    // A status is -errno; anything else (a positive one, from a hostile or broken server) is a protocol error.
    const int code = reply.status < 0 && reply.status > -4096 ? reply.status : -EPROTO;
    const std::string what = code == reply.status ? strerror(-code) : "status " + std::to_string(reply.status);
    return fail(code, "the page server refused the lazyd HELLO (" + what +
                          "): run the same lazyd release on both ends, or restore with --link stock");
  }
  link_checkpoint_ = reply.checkpoint;
  granted_features_ = reply.features & hello_features_;
  hello_granted_ = true;
  checksums_ = (granted_features_ & wire::kFeatureChecksum) != 0;
  return 0;
}

int PageClient::flush() {
  while (hello_off_ < hello_out_.size()) {
    ssize_t n = io_send(hello_out_.data() + hello_off_, hello_out_.size() - hello_off_);
    if (n < 0) {
      if (n == -EAGAIN) return 0;
      const std::string why = tls_ && !tls_->error().empty() ? tls_->error() : strerror(static_cast<int>(-n));
      return fail_lost(static_cast<int>(n), "sending the HELLO to the page server failed: " + why);
    }
    hello_off_ += static_cast<size_t>(n);
    bytes_sent_ += static_cast<uint64_t>(n);
  }
  const size_t head_size = wire::header_size(format_);
  while (out_off_ < out_.size()) {
    // Under TLS each header goes in a record of its own: criu's server reads a header in one read (docs/protocol.md §1.9).
    size_t len = out_.size() - out_off_;
    if (tls_) len = std::min(len, head_size - out_off_ % head_size);
    ssize_t n = io_send(out_.data() + out_off_, len);
    if (n < 0) {
      if (n == -EAGAIN) return 0;
      const std::string why = tls_ && !tls_->error().empty() ? tls_->error() : strerror(static_cast<int>(-n));
      return fail_lost(static_cast<int>(n), "sending to the page server failed: " + why);
    }
    out_off_ += static_cast<size_t>(n);
    bytes_sent_ += static_cast<uint64_t>(n);
  }
  out_.clear();
  out_off_ = 0;
  return 0;
}

int PageClient::pump(std::vector<PageReply>* done) {
  if (!error_.empty()) return -EPIPE;
  if (fd_ < 0) return fail(-ENOTCONN, "page server not connected");
  int rc = flush();
  if (rc < 0) return rc;
  return read_replies(done);
}

// Replies come strictly in request order (§1.6): the next bytes always belong to the head of the FIFO. Reads
// are exact (header, then the payload straight into the requester's buffer) and accumulate across calls.
int PageClient::read_replies(std::vector<PageReply>* done) {
  const size_t head_size = wire::header_size(format_);
  const size_t limit = tls_ ? SIZE_MAX : read_limit_;
  size_t taken = 0;
  for (;;) {
    if (taken >= limit) return 0;
    ssize_t n;
    if (hello_awaiting_) {
      n = io_recv(hello_in_ + hello_got_, wire::kHelloReplySize - hello_got_);
    } else if (in_trailer_) {
      n = io_recv(trailer_.data() + trailer_got_, trailer_.size() - trailer_got_);
    } else if (!in_payload_) {
      n = io_recv(head_ + head_len_, head_size - head_len_);
    } else if (fifo_.front().sink) {
      n = recv_to_sink(fifo_.front(), static_cast<size_t>(payload_len_ - payload_got_));
    } else {
      n = io_recv(fifo_.front().buf + payload_got_, std::min(static_cast<size_t>(payload_len_ - payload_got_), limit - taken));
    }
    if (n < 0) {
      if (n == -EAGAIN) return 0;
      if (!sink_error_.empty()) return fail(static_cast<int>(n), sink_error_);
      if (tls_ && !tls_->error().empty()) {
        return fail_lost(static_cast<int>(n), "reading from the page server failed: " + tls_->error());
      }
      if (n == -ECONNRESET) {
        return fail_lost(-ECONNRESET, "the page server reset the connection with " + std::to_string(fifo_.size()) +
                                          " request(s) unanswered" + closed_hint());
      }
      return fail_lost(static_cast<int>(n), std::string("reading from the page server failed: ") + strerror(static_cast<int>(-n)));
    }
    if (n == 0) {
      if (fifo_.empty() && head_len_ == 0) return fail_lost(-ECONNRESET, "the page server closed the connection" + closed_hint());
      return fail_lost(-ECONNRESET, "the page server closed the connection with " + std::to_string(fifo_.size()) +
                                        " request(s) unanswered" + closed_hint());
    }
    last_progress_ns_ = now_ns();
    bytes_received_ += static_cast<uint64_t>(n);
    taken += static_cast<size_t>(n);
    if (hello_awaiting_) {
      hello_got_ += static_cast<size_t>(n);
      if (hello_got_ < wire::kHelloReplySize) continue;
      const int rc = hello_answered();
      if (rc < 0) return rc;
      if (fifo_.empty()) last_progress_ns_ = 0;
      continue;
    }
    if (fifo_.empty()) return fail(-EPROTO, "the page server sent data nobody asked for");
    if (in_trailer_) {
      trailer_got_ += static_cast<size_t>(n);
      if (trailer_got_ < trailer_.size()) continue;
      in_trailer_ = false;
      const int rc = reply_complete(done);
      if (rc < 0) return rc;
      continue;
    }

    if (!in_payload_) {
      head_len_ += static_cast<size_t>(n);
      if (head_len_ < head_size) continue;
      head_len_ = 0;
      const PageRequest& req = fifo_.front();
      const wire::Header h = wire::decode(format_, head_);
      // The reply echoes vaddr and dst_id; nr_pages may shrink. Anything else means we lost track of the
      // stream: never install data we cannot place (§1.6 "Out of order read").
      if (h.cmd != wire::GET_REPLY_CMD) {
        return fail(-EPROTO, "page server reply has cmd " + hex(h.cmd) + ", expected ADD_F|PE_PRESENT " +
                                 hex(wire::GET_REPLY_CMD));
      }
      if (h.vaddr != req.img_vaddr || h.dst_id != req.pid) {
        return fail(-EPROTO, "out-of-order reply: got vaddr " + hex(h.vaddr) + " pid " + std::to_string(h.dst_id) +
                                 ", expected vaddr " + hex(req.img_vaddr) + " pid " + std::to_string(req.pid));
      }
      if (h.nr_pages == 0 || h.nr_pages > req.nr_pages) {
        return fail(-EPROTO, "page server replied with " + std::to_string(h.nr_pages) + " pages for a GET of " +
                                 std::to_string(req.nr_pages) + " at " + hex(req.img_vaddr));
      }
      reply_pages_ = h.nr_pages;
      payload_len_ = h.nr_pages * page_size_;
      payload_got_ = 0;
      in_payload_ = true;
      continue;
    }
    payload_got_ += static_cast<uint64_t>(n);
    if (payload_got_ < payload_len_) continue;
    in_payload_ = false;
    if (checksums_) {
      trailer_.resize(wire::checksum_trailer_size(reply_pages_));
      trailer_got_ = 0;
      in_trailer_ = true;
      continue;
    }
    const int rc = reply_complete(done);
    if (rc < 0) return rc;
  }
}

// Under checksums a reply's pages are checked here, before anyone may install them. The failing run is asked for
// again into the same buffer (the reply waits meanwhile); a second failure ends the session.
int PageClient::reply_complete(std::vector<PageReply>* done) {
  const PageRequest req = fifo_.front();
  fifo_.pop_front();
  last_progress_ns_ = fifo_.empty() ? 0 : now_ns();
  auto refetch = refetching_.find(req.cookie);
  if (checksums_) {
    if (!req.buf) return fail(-EPROTO, "a sink request in a checksum session: its pages cannot be checked");
    if (refetch != refetching_.end() && reply_pages_ != req.nr_pages) {
      return fail(-EPROTO, "the page server answered the re-fetch of " + std::to_string(req.nr_pages) + " pages at " +
                               hex(req.img_vaddr) + " of pid " + std::to_string(req.pid) + " with " +
                               std::to_string(reply_pages_));
    }
    const wire::ChecksumCheck check = wire::check_pages(req.buf, reply_pages_, page_size_, trailer_.data());
    if (check.bad) {
      checksum_mismatches_ += check.bad;
      const uint64_t at = req.img_vaddr + check.first * page_size_;
      char crcs[64];
      snprintf(crcs, sizeof crcs, "CRC32C %08x, expected %08x", check.actual, check.expected);
      const std::string what = std::to_string(check.bad) + " page(s) of pid " + std::to_string(req.pid) + " from " +
                               hex(at) + " failed their checksum (" + crcs + ")";
      if (refetch != refetching_.end()) {
        return fail(-EBADMSG, what + " again when fetched a second time: the bytes are corrupted between the page "
                                     "server and this host (link, NIC or memory); no such page was installed");
      }
      last_mismatch_ = what + ": fetching them again";
      PageRequest again = req;
      again.img_vaddr = at;
      again.nr_pages = check.last - check.first + 1;
      again.buf = req.buf + check.first * page_size_;
      refetching_.emplace(req.cookie, Refetch{req, reply_pages_});
      append_get(again);
      return flush();
    }
  }
  if (refetch != refetching_.end()) {
    const Refetch& first = refetch->second;
    done->push_back(PageReply{first.original.cookie, first.original.img_vaddr, first.reply_pages,
                              first.original.nr_pages, first.original.buf});
    refetching_.erase(refetch);
    return 0;
  }
  done->push_back(PageReply{req.cookie, req.img_vaddr, reply_pages_, req.nr_pages, req.buf});
  return 0;
}

ssize_t PageClient::recv_to_sink(const PageRequest& request, size_t want) {
  const uint64_t at = request.sink_offset + payload_got_;
  std::string why;
  ssize_t n;
  if (tls_) {
    if (sink_buf_.empty()) sink_buf_.resize(256 * 1024);
    n = io_recv(sink_buf_.data(), std::min(want, sink_buf_.size()));
    if (n <= 0) return n;
    const ssize_t put = request.sink->put(sink_buf_.data(), static_cast<size_t>(n), at, &why);
    if (put < 0) n = put;
  } else {
    n = request.sink->take_from(fd_, at, want, &why);
  }
  if (n < 0 && !why.empty()) sink_error_ = "keeping the received pages failed: " + why;
  return n;
}

int64_t PageClient::stalled_ms() const {
  if (closing_ && fd_ >= 0) return static_cast<int64_t>((now_ns() - last_progress_ns_) / 1000000);  // the answer to CLOSE
  if (fifo_.empty() || last_progress_ns_ == 0) return 0;
  return static_cast<int64_t>((now_ns() - last_progress_ns_) / 1000000);
}

int PageClient::close(int timeout_ms, int32_t* status) { return close_session(timeout_ms, status, false); }

int PageClient::close_complete(int timeout_ms, int32_t* status) { return close_session(timeout_ms, status, true); }

int PageClient::begin_close() {
  if (fd_ < 0) return -ENOTCONN;
  if (tls_) return -EOPNOTSUPP;
  if (!error_.empty()) return -EPIPE;
  if (!fifo_.empty()) return -EBUSY;
  wire::Header h;
  h.cmd = wire::PS_IOV_CLOSE;
  uint8_t bytes[wire::HEADER_SIZE_MAX] = {};
  wire::encode(format_, h, bytes);
  out_.insert(out_.end(), bytes, bytes + wire::header_size(format_));
  closing_ = true;
  last_progress_ns_ = now_ns();
  const int rc = poll_close(nullptr);
  return rc == -EAGAIN ? 0 : rc;
}

int PageClient::poll_close(int32_t* status) {
  if (!closing_ || fd_ < 0) return -EINVAL;
  int rc = flush();
  if (rc < 0) return rc;
  if (wants_write()) return -EAGAIN;
  if (!fin_sent_) {
    // Every page is held (the caller's promise): our EOF may follow the CLOSE, and makes the dump flush its answer.
    net::set_reset_on_close(fd_, false);
    shutdown(fd_, SHUT_WR);
    fin_sent_ = true;
  }
  while (close_got_ < sizeof close_answer_) {
    ssize_t n = io_recv(close_answer_ + close_got_, sizeof close_answer_ - close_got_);
    if (n == -EAGAIN) return -EAGAIN;
    if (n == 0) return fail(-ECONNRESET, "the page server closed the connection before answering CLOSE" + closed_hint());
    if (n < 0) return fail(static_cast<int>(n), std::string("reading the CLOSE answer failed: ") + strerror(static_cast<int>(-n)));
    close_got_ += static_cast<size_t>(n);
    bytes_received_ += static_cast<uint64_t>(n);
    last_progress_ns_ = now_ns();
  }
  if (status) std::memcpy(status, close_answer_, sizeof *status);  // a native int32, always 0 from criu (§1.3)
  if (!status) return -EAGAIN;  // begin_close(): the answer is there already; the caller collects it next time
  ::close(fd_);
  fd_ = -1;
  return 0;
}

int PageClient::close_session(int timeout_ms, int32_t* status, bool fin_with_close) {
  if (fd_ < 0) return -ENOTCONN;
  if (!fifo_.empty() && error_.empty()) return -EBUSY;
  int rc = 0;
  if (error_.empty()) {
    wire::Header h;
    h.cmd = wire::PS_IOV_CLOSE;
    uint8_t bytes[wire::HEADER_SIZE_MAX] = {};
    wire::encode(format_, h, bytes);
    out_.insert(out_.end(), bytes, bytes + wire::header_size(format_));
    int left = timeout_ms;
    while (rc == 0 && wants_write()) {
      rc = flush();
      if (rc == 0 && wants_write()) {
        rc = wait_fd(fd_, POLLOUT, &left);
        if (rc < 0) rc = fail(rc, "timed out sending CLOSE to the page server");
      }
    }
    if (rc == 0 && fin_with_close) {
      // Every page is held (close_complete): our EOF may follow the CLOSE, and makes the dump flush its answer.
      // Under TLS our close_notify goes first: criu's server answers, sends its own close_notify and waits for ours
      // (gnutls_bye, both ways), then reads our EOF (§1.5 step 6).
      if (tls_) tls_->bye();
      net::set_reset_on_close(fd_, false);
      shutdown(fd_, SHUT_WR);
    }
    // The answer is a native int32 status (always 0 from criu), §1.3.
    uint8_t answer[4];
    size_t got = 0;
    while (rc == 0 && got < sizeof answer) {
      ssize_t n = io_recv(answer + got, sizeof answer - got);
      if (n > 0) {
        got += static_cast<size_t>(n);
        bytes_received_ += static_cast<uint64_t>(n);
      } else if (n == 0) {
        rc = fail(-ECONNRESET, "the page server closed the connection before answering CLOSE" + closed_hint());
      } else if (n == -EAGAIN) {
        rc = wait_fd(fd_, POLLIN, &left);
        if (rc < 0) rc = fail(rc, "timed out waiting for the page server's answer to CLOSE");
      } else {
        const std::string why = tls_ && !tls_->error().empty() ? tls_->error() : strerror(static_cast<int>(-n));
        rc = fail(static_cast<int>(n), "reading the CLOSE answer failed: " + why);
      }
    }
    if (rc == 0 && status) std::memcpy(status, answer, sizeof *status);
    // The CLOSE was answered: from here on our end may be a FIN (the server waits for it, §1.6).
    if (rc == 0) net::set_reset_on_close(fd_, false);
    if (rc == 0 && tls_) {
      // criu's server answers CLOSE, sends its close_notify, and then waits for our EOF with a plain read (§1.5
      // step 6). Send ours and our FIN, then read until its EOF: closing with its close_notify unread would make
      // the kernel reset the connection, and criu's wait would fail ("Unexpected data").
      if (!fin_with_close) {
        tls_->bye();
        shutdown(fd_, SHUT_WR);
      }
      int drain_left = std::min(left < 0 ? 2000 : left, 2000);
      uint8_t sink[256];
      for (;;) {
        ssize_t n = recv(fd_, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0 || (n < 0 && errno == EINTR)) continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) break;
        if (wait_fd(fd_, POLLIN, &drain_left) < 0) break;
      }
    }
  } else {
    rc = -EPIPE;
  }
  tls_.reset();
  // The server waits for our side to close first (§1.5, §1.6).
  ::close(fd_);
  fd_ = -1;
  return rc;
}

// ---- LocalPageSource ----

int LocalPageSource::add_run(uint64_t pid, uint64_t img_start, uint64_t nr_pages, int fd, uint64_t file_offset) {
  if (nr_pages == 0 || (img_start & (page_size_ - 1)) != 0 || fd < 0) return -EINVAL;
  auto& runs = runs_[pid];
  const uint64_t end = img_start + nr_pages * page_size_;
  auto next = runs.lower_bound(img_start);
  if (next != runs.end() && next->first < end) return -EINVAL;
  if (next != runs.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.nr_pages * page_size_ > img_start) return -EINVAL;
  }
  runs.emplace(img_start, Run{nr_pages, fd, file_offset});
  return 0;
}

int LocalPageSource::submit(const PageRequest& request) {
  auto task = runs_.find(request.pid);
  const Run* run = nullptr;
  uint64_t run_start = 0;
  if (task != runs_.end()) {
    auto it = task->second.upper_bound(request.img_vaddr);
    if (it != task->second.begin()) {
      --it;
      if (request.img_vaddr < it->first + it->second.nr_pages * page_size_) {
        run = &it->second;
        run_start = it->first;
      }
    }
  }
  if (!run) {
    error_ = "no local pages for pid " + std::to_string(request.pid) + " at " + hex(request.img_vaddr);
    return -ENOENT;
  }
  // Clamp at the end of the run, as a page server clamps at the end of its iovec (§1.6).
  const uint64_t first = (request.img_vaddr - run_start) / page_size_;
  const uint64_t pages = std::min(request.nr_pages, run->nr_pages - first);
  const uint64_t len = pages * page_size_;
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = pread(run->fd, request.buf + got, len - got, static_cast<off_t>(run->file_offset + first * page_size_ + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      error_ = std::string("reading local pages failed: ") + strerror(errno);
      return -errno;
    }
    if (n == 0) {
      error_ = "local pages image is shorter than its pagemap (pid " + std::to_string(request.pid) + " at " +
               hex(request.img_vaddr) + ")";
      return -EIO;
    }
    got += static_cast<uint64_t>(n);
  }
  bytes_read_ += len;
  ready_.push_back(PageReply{request.cookie, request.img_vaddr, pages, request.nr_pages, request.buf});
  return 0;
}

int LocalPageSource::pump(std::vector<PageReply>* done) {
  for (const PageReply& reply : ready_) done->push_back(reply);
  ready_.clear();
  return 0;
}

}  // namespace lazyd
