// libFuzzer target: the lazy-pages daemon's page client (lazy/page_client.h) reading a hostile page server's
// replies. The input is what the server sends (after one byte of settings); in HELLO mode (a settings bit) the
// client opens with the lazyd link's HELLO (docs/protocol.md §7) and the stream starts with its 32-byte reply; the GETs the client has in flight are
// derived from the reply headers in that stream (so mutations explore both replies that match and replies that
// do not), submitted before the stream is fed over a socketpair in uneven chunks, each followed by pump().
// Built and run by scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
//
// Invariants checked: replies come back in request order, each for its request's address with 1..requested
// pages; their bytes are exactly the payload that followed the header in the stream; nothing is ever written
// outside a request's buffer (guard bytes; ASan too); once pump() fails, error() names why and every later call
// fails; a stream that ends with requests unanswered is an error, never a silent success; the client sent exactly
// one GET per request, in order, in the chosen layout (and a CLOSE only when nothing was in flight); close()
// answers 0 only with the server's 4 status bytes. HELLO mode: the HELLO goes out first, byte for byte; a reply that
// is not a granting HELLO reply fails the client before any page reply is returned, and a granting one binds it
// to the reply's checkpoint.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#include "lazy/page_client.h"
#include "wire/link_ext.h"
#include "wire/wire.h"

#include "fuzz_check.h"

using namespace lazyd;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMaxPages = 64;      // per request
constexpr size_t kMaxRequests = 32;
constexpr size_t kGuard = 64;
constexpr uint8_t kGuardByte = 0xcd;

struct Request {
  PageRequest get;
  std::vector<uint8_t> buf;  // nr_pages * kPage + kGuard
};

// The requests a well-behaved client would have in flight for this stream: one per header, at its address, for
// its page count plus `extra` (a server may clamp), capped; a header with 0 or too many pages still gets one.
std::vector<std::unique_ptr<Request>> requests_for(const uint8_t* data, size_t size, wire::Format format, uint8_t extra) {
  std::vector<std::unique_ptr<Request>> out;
  const size_t head = wire::header_size(format);
  size_t off = 0;
  while (off + head <= size && out.size() < kMaxRequests) {
    const wire::Header h = wire::decode(format, data + off);
    auto r = std::make_unique<Request>();
    uint64_t pages = h.nr_pages == 0 || h.nr_pages > kMaxPages ? 1 + (h.nr_pages & 7) : h.nr_pages;
    pages = std::min<uint64_t>(kMaxPages, pages + extra);
    r->get.cookie = out.size();
    r->get.pid = h.dst_id;
    r->get.img_vaddr = h.vaddr & ~(kPage - 1);
    r->get.nr_pages = pages;
    r->buf.assign(pages * kPage + kGuard, kGuardByte);
    r->get.buf = r->buf.data();
    out.push_back(std::move(r));
    const uint64_t payload = h.nr_pages <= kMaxPages ? h.nr_pages * kPage : 0;
    off += head + payload;
  }
  return out;
}

void drain(int fd, std::vector<uint8_t>* sink) {
  uint8_t buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return;
    sink->insert(sink->end(), buf, buf + n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* input, size_t input_size) {
  if (input_size < 1) return 0;
  const uint8_t settings = input[0];
  const wire::Format format = (settings & 1) ? wire::Format::V32 : wire::Format::V24;
  const bool try_close = settings & 2;          // after the replies, end the session with CLOSE
  const uint8_t extra = (settings >> 2) & 3;    // pages requested beyond what the reply header says
  const bool hello_mode = settings & 0x10;      // the session opens with HELLO; the stream starts with its reply
  const size_t chunk_seed = settings >> 5;
  const uint8_t* stream = input + 1;            // all the server sends
  const size_t stream_size = input_size - 1;
  const size_t prefix = hello_mode ? std::min(stream_size, wire::kHelloReplySize) : 0;
  const uint8_t* data = stream + prefix;        // the page replies (and the CLOSE status)
  const size_t size = stream_size - prefix;
  wire::HelloReply granted;
  const bool grants = hello_mode && prefix == wire::kHelloReplySize && wire::decode_hello_reply(stream, &granted) &&
                      granted.status == 0;

  int sv[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const int server = sv[0];
  PageClient client(format, kPage);
  FUZZ_CHECK(client.adopt(sv[1]) == 0);
  wire::Hello hello;
  hello.features = wire::kFeatureBind;
  for (size_t i = 0; i < hello.token.size(); i++) hello.token[i] = static_cast<uint8_t>(0xa0 + i);
  if (hello_mode) client.open_with_hello(hello);

  std::vector<std::unique_ptr<Request>> requests = requests_for(data, size, format, extra);
  size_t submitted = 0;
  for (auto& r : requests) {
    if (client.submit(r->get) != 0) break;
    submitted++;
  }
  FUZZ_CHECK(submitted == requests.size() || !client.error().empty());

  std::vector<PageReply> done;
  std::vector<uint8_t> from_client;
  size_t sent = 0;
  int rc = 0;
  bool failed = !client.error().empty();
  // Feed the stream; stop early in close mode once every request is answered (the rest is the CLOSE status).
  // (The HELLO reply always goes out, even in close mode with no request.)
  while (!failed && sent < stream_size && (sent < prefix || !(try_close && done.size() == submitted))) {
    size_t chunk = 1 + (chunk_seed * 977 + sent * 31) % 7000;
    if (try_close) {
      // Never feed past the end of the replies in close mode: pump() would read the status as stray data.
      size_t end = 0, i = 0;
      const size_t head = wire::header_size(format);
      for (size_t k = 0; k < submitted && end + head <= size; k++, i++) {
        const wire::Header h = wire::decode(format, data + end);
        end += head + (h.nr_pages <= kMaxPages ? h.nr_pages * kPage : 0);
      }
      end += prefix;
      if (end > sent) chunk = std::min(chunk, end - sent);
    }
    chunk = std::min(chunk, stream_size - sent);
    const ssize_t n = send(server, stream + sent, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) sent += static_cast<size_t>(n);
    drain(server, &from_client);
    const size_t before = done.size();
    rc = client.pump(&done);
    if (rc < 0) {
      failed = true;
      FUZZ_CHECK(!client.error().empty());
    }
    FUZZ_CHECK(done.size() >= before);
    if (n <= 0 && rc == 0 && done.size() == before) break;  // the socket buffer is full and nothing moves: stop
  }
  if (!failed && !(try_close && done.size() == submitted)) {
    // The server hangs up: the client must notice, and it is an error unless nothing was outstanding... which
    // is an error too (a page server never closes first, §1.6).
    shutdown(server, SHUT_WR);
    for (int round = 0; round < 64 && !failed; round++) {
      rc = client.pump(&done);
      if (rc < 0) failed = true;
    }
    FUZZ_CHECK(failed);
    FUZZ_CHECK(!client.error().empty());
  }
  if (failed) {
    std::vector<PageReply> more;
    FUZZ_CHECK(client.pump(&more) < 0 && more.empty());
    PageRequest again = requests.empty() ? PageRequest{} : requests[0]->get;
    if (!requests.empty()) FUZZ_CHECK(client.submit(again) < 0);
  }

  // HELLO mode: no page reply without a granting HELLO reply; a granted session is bound to its checkpoint.
  if (hello_mode && !grants) {
    FUZZ_CHECK(done.empty() && client.link_checkpoint() == 0);
    if (prefix == wire::kHelloReplySize) FUZZ_CHECK(failed);  // a whole reply that does not grant fails the client
  }
  if (grants && sent >= wire::kHelloReplySize) FUZZ_CHECK(client.link_checkpoint() == granted.checkpoint);
  // Every reply: in order, for its request, with the stream's bytes, nothing beyond.
  FUZZ_CHECK(done.size() <= submitted);
  const size_t head = wire::header_size(format);
  size_t off = 0;
  for (size_t k = 0; k < done.size(); k++) {
    const PageReply& reply = done[k];
    const Request& r = *requests[k];
    FUZZ_CHECK(reply.cookie == k);
    FUZZ_CHECK(reply.img_vaddr == r.get.img_vaddr);
    FUZZ_CHECK(reply.buf == r.get.buf);
    FUZZ_CHECK(reply.requested_pages == r.get.nr_pages);
    FUZZ_CHECK(reply.nr_pages >= 1 && reply.nr_pages <= r.get.nr_pages);
    FUZZ_CHECK(off + head <= size);
    const wire::Header h = wire::decode(format, data + off);
    FUZZ_CHECK(h.cmd == wire::GET_REPLY_CMD && h.vaddr == r.get.img_vaddr && h.dst_id == r.get.pid);
    FUZZ_CHECK(h.nr_pages == reply.nr_pages);
    off += head;
    FUZZ_CHECK(off + reply.nr_pages * kPage <= size);
    FUZZ_CHECK(memcmp(reply.buf, data + off, reply.nr_pages * kPage) == 0);
    off += reply.nr_pages * kPage;
  }
  for (size_t k = 0; k < requests.size(); k++) {
    const Request& r = *requests[k];
    const size_t used = r.get.nr_pages * kPage;
    for (size_t i = used; i < r.buf.size(); i++) FUZZ_CHECK(r.buf[i] == kGuardByte);
    // A request that got no reply had nothing installed past what arrived of its payload: never beyond the
    // header's page count (checked by the guard) — and an answered one only its reply's pages.
    if (k < done.size()) {
      for (size_t i = done[k].nr_pages * kPage; i < used; i++) FUZZ_CHECK(r.buf[i] == kGuardByte);
    }
  }

  if (!failed && try_close && done.size() == submitted) {
    // The rest of the stream, up to 4 bytes, is the server's CLOSE status.
    const size_t rest = size - off;
    const size_t status_len = std::min<size_t>(rest, 4);
    if (status_len) FUZZ_CHECK(send(server, data + off, status_len, MSG_NOSIGNAL) == static_cast<ssize_t>(status_len));
    if (status_len < 4) shutdown(server, SHUT_WR);
    int32_t status = -1;
    const int closed = client.close(1000, &status);
    if (status_len == 4) {
      FUZZ_CHECK(closed == 0);
      int32_t want;
      memcpy(&want, data + off, 4);
      FUZZ_CHECK(status == want);
    } else {
      FUZZ_CHECK(closed < 0 && !client.error().empty());
    }
  }

  // What the client sent: the HELLO first (HELLO mode), one GET per submitted request, in order, in the chosen
  // layout; then at most a CLOSE.
  drain(server, &from_client);
  if (hello_mode) {
    uint8_t want[wire::kHelloSize];
    wire::encode_hello(hello, want);
    FUZZ_CHECK(from_client.size() >= wire::kHelloSize && memcmp(from_client.data(), want, wire::kHelloSize) == 0);
    from_client.erase(from_client.begin(), from_client.begin() + wire::kHelloSize);
  }
  FUZZ_CHECK(from_client.size() >= submitted * head);
  for (size_t k = 0; k < submitted; k++) {
    const wire::Header h = wire::decode(format, from_client.data() + k * head);
    FUZZ_CHECK(h.cmd == wire::PS_IOV_GET);
    FUZZ_CHECK(h.vaddr == requests[k]->get.img_vaddr && h.dst_id == requests[k]->get.pid);
    FUZZ_CHECK(h.nr_pages == requests[k]->get.nr_pages);
  }
  const size_t tail = from_client.size() - submitted * head;
  FUZZ_CHECK(tail == 0 || (tail == head && done.size() == submitted &&
                           wire::decode(format, from_client.data() + submitted * head).cmd == wire::PS_IOV_CLOSE));
  close(server);
  return 0;
}
