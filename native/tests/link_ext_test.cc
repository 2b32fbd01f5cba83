// The link extension (native/core/wire/link_ext.{h,cc}, docs/protocol.md §7): the HELLO codec, that no CRIU
// request can be taken for a HELLO (and a HELLO never for a CRIU request), and a LazySession's link binding:
// HELLO with a staged checkpoint's token binds the session to it, a GET outside it is refused, an unknown token
// gets a refusing reply, --require-link-token refuses a stock client, and a stock session is served as before.
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <string>
#include <chrono>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "fixtures.h"
#include "lazy/page_client.h"
#include "server/lazy_session.h"
#include "server/page_index.h"
#include "staging/memfd_store.h"
#include "staging/relay_store.h"
#include "util/crc32c.h"
#include "wire/link_ext.h"
#include "wire/page_checksums.h"
#include "wire/wire.h"

namespace {

using namespace lazyd;
using Bytes = std::vector<uint8_t>;

int g_passed = 0;

#define CHECK(cond, ...)                                                            \
  do {                                                                              \
    if (cond) {                                                                     \
      ++g_passed;                                                                   \
    } else {                                                                        \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n");                                                  \
      std::printf("%d passed, 1 failed\n", g_passed);                              \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

constexpr uint64_t kPage = 4096;
constexpr uint64_t kStagedVaddr = 0x7e0000000000;
constexpr uint64_t kOtherVaddr = 0x7d0000000000;
constexpr uint64_t kImageVaddr = 0x7f0000000000;

uint8_t pattern_byte(uint64_t i) { return static_cast<uint8_t>((i * 2654435761u) >> 13); }

// A sealed memfd checkpoint of one lazy entry at vaddr of pid holding bytes (whole pages).
std::shared_ptr<StagedCheckpoint> staged_checkpoint_of(uint64_t id, uint64_t pid, uint64_t vaddr, const Bytes& bytes,
                                                       uint8_t token_byte) {
  MemfdStoreOptions options;
  options.fill = MemfdStoreOptions::Fill::kRead;
  auto store = std::make_shared<MemfdStore>(options);
  CHECK(store->init_error() == 0, "memfd store");
  CHECK(store->begin_entry(pid_key(pid), vaddr, bytes.size() / kPage, wire::PE_LAZY | wire::PE_PRESENT) == 0, "begin_entry");
  CHECK(store->receive_bytes(bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()), "receive");
  CHECK(store->seal() == 0, "seal");
  auto checkpoint = std::make_shared<StagedCheckpoint>();
  checkpoint->id = id;
  checkpoint->store = store;
  checkpoint->token.fill(token_byte);
  checkpoint->has_token = true;
  return checkpoint;
}

std::shared_ptr<StagedCheckpoint> staged_checkpoint(uint64_t id, uint64_t pid, uint64_t vaddr, uint8_t fill, uint8_t token_byte,
                                                    uint32_t pages = 4) {
  return staged_checkpoint_of(id, pid, vaddr, Bytes(pages * kPage, fill), token_byte);
}

// One staged checkpoint, found by its pids and its token.
struct OneCheckpoint : StagedLookup {
  std::shared_ptr<StagedCheckpoint> c;
  explicit OneCheckpoint(std::shared_ptr<StagedCheckpoint> checkpoint) : c(std::move(checkpoint)) {}
  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override {
    return c->store->entries(pid_key(pid)) ? c : nullptr;
  }
  std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const override {
    return token == c->token ? c : nullptr;
  }
};

// Appends what the socket holds now to out (non-blocking).
void read_available(int fd, Bytes* out) {
  uint8_t buf[65536];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) out->insert(out->end(), buf, buf + n);
}

struct TwoCheckpoints : StagedLookup {
  std::shared_ptr<StagedCheckpoint> a = staged_checkpoint(5, 100, kStagedVaddr, 0xaa, 0x5a);
  std::shared_ptr<StagedCheckpoint> b = staged_checkpoint(6, 200, kOtherVaddr, 0xbb, 0x6b);
  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override {
    return pid == 100 ? a : pid == 200 ? b : nullptr;
  }
  std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const override {
    if (token == a->token) return a;
    if (token == b->token) return b;
    return nullptr;
  }
};

std::unique_ptr<PageIndex> image_index() {
  int fd = memfd_create("link-test-pages", MFD_CLOEXEC);
  CHECK(fd >= 0, "memfd");
  Bytes bytes(4 * kPage, 0x11);
  CHECK(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()), "write");
  auto index = std::make_unique<PageIndex>(kPage);
  CHECK(index->add_file("/proc/self/fd/" + std::to_string(fd)) == 0, "add_file");
  close(fd);
  PageRun run;
  run.vaddr = kImageVaddr;
  run.nr_pages = 4;
  run.flags = wire::PE_LAZY | wire::PE_PRESENT;
  run.file = 0;
  CHECK(index->add_task(1, {run}) == 0, "add_task");
  return index;
}

Bytes hello(uint8_t token_byte, uint32_t version = wire::kLinkVersion, uint64_t features = wire::kFeatureBind) {
  wire::Hello h;
  h.version = version;
  h.features = features;
  h.token.fill(token_byte);
  Bytes out(wire::kHelloSize);
  wire::encode_hello(h, out.data());
  return out;
}

Bytes get24(uint64_t pid, uint64_t vaddr, uint32_t pages) {
  wire::Header h;
  h.cmd = wire::PS_IOV_GET;
  h.nr_pages = pages;
  h.vaddr = vaddr;
  h.dst_id = pid;
  Bytes out(wire::HEADER_SIZE_V24);
  CHECK(wire::encode(wire::Format::V24, h, out.data()), "encode");
  return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

struct Outcome {
  LazySession::Status status;
  Bytes out;
  SessionStats stats;
  std::string error;
};

// Sends input and EOF through a socketpair, runs the session to its end and collects what it wrote.
Outcome run(const Bytes& input, const StagedLookup* staged, bool require_token) {
  static std::unique_ptr<PageIndex> index = image_index();
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  SessionLimits limits;
  limits.max_request_pages = 64;
  limits.max_queued_replies = 64;
  limits.max_queued_bytes = 1 << 20;
  limits.require_link_token = require_token;
  LazySession session(sv[0], *index, limits, staged);
  CHECK(send(sv[1], input.data(), input.size(), 0) == static_cast<ssize_t>(input.size()), "send");
  shutdown(sv[1], SHUT_WR);
  Outcome outcome{LazySession::Status::kOpen, {}, {}, {}};
  for (int rounds = 0; outcome.status == LazySession::Status::kOpen; rounds++) {
    CHECK(rounds < 10000, "the session never ended");
    outcome.status = session.on_readable();
    if (outcome.status == LazySession::Status::kOpen && session.wants_write()) outcome.status = session.on_writable();
    read_available(sv[1], &outcome.out);
  }
  read_available(sv[1], &outcome.out);
  outcome.stats = session.stats();
  outcome.error = session.error();
  close(sv[1]);
  return outcome;
}

wire::HelloReply reply_of(const Outcome& outcome) {
  wire::HelloReply reply;
  CHECK(outcome.out.size() >= wire::kHelloReplySize, "no HELLO reply (%zu bytes out)", outcome.out.size());
  CHECK(wire::decode_hello_reply(outcome.out.data(), &reply), "not a HELLO reply");
  return reply;
}

void test_codec() {
  wire::Hello h;
  h.features = 0x1234;
  for (size_t i = 0; i < wire::kTokenSize; i++) h.token[i] = static_cast<uint8_t>(i * 17);
  uint8_t buf[wire::kHelloSize];
  wire::encode_hello(h, buf);
  wire::Hello back;
  CHECK(wire::decode_hello(buf, &back), "decode_hello");
  CHECK(back.version == wire::kLinkVersion && back.features == 0x1234 && back.token == h.token, "HELLO round trip");
  buf[0] ^= 1;
  CHECK(!wire::decode_hello(buf, &back), "a wrong magic is no HELLO");

  wire::HelloReply r;
  r.status = -EACCES;
  r.checkpoint = 0xfeedface01;
  uint8_t rbuf[wire::kHelloReplySize];
  wire::encode_hello_reply(r, rbuf);
  wire::HelloReply rback;
  CHECK(wire::decode_hello_reply(rbuf, &rback), "decode_hello_reply");
  CHECK(rback.status == -EACCES && rback.checkpoint == 0xfeedface01, "reply round trip");
  rbuf[20] = 1;
  CHECK(!wire::decode_hello_reply(rbuf, &rback), "the reserved word must be 0");

  char hex[2 * wire::kTokenSize + 1];
  wire::token_to_hex(h.token, hex);
  wire::LinkToken parsed;
  CHECK(wire::token_from_hex(hex, strlen(hex), &parsed) && parsed == h.token, "hex round trip");
  CHECK(!wire::token_from_hex(hex, strlen(hex) - 1, &parsed), "short hex");
  hex[3] = 'G';
  CHECK(!wire::token_from_hex(hex, strlen(hex), &parsed), "non-hex digit");

  wire::LinkToken t1, t2;
  CHECK(wire::random_token(&t1) == 0 && wire::random_token(&t2) == 0 && t1 != t2, "random tokens differ");
}

// The magic's command is none of CRIU's, and header detection does not take a HELLO for either layout.
void test_magic_apart_from_criu() {
  const uint32_t command = wire::kHelloMagic & wire::PS_CMD_MASK;
  for (uint32_t c : {wire::PS_IOV_ADD, wire::PS_IOV_HOLE, wire::PS_IOV_OPEN, wire::PS_IOV_OPEN2, wire::PS_IOV_PARENT,
                     wire::PS_IOV_ADD_F, wire::PS_IOV_GET, wire::PS_IOV_CLOSE, wire::PS_IOV_FORCE_CLOSE}) {
    CHECK(command != c, "the HELLO magic's command %#x is CRIU's", c);
  }
  CHECK(wire::kHelloMagic != wire::LAZY_PAGES_RESTORE_FINISHED, "not RSTF");
  const Bytes h = hello(0x5a);
  CHECK(wire::detect(h.data(), h.size(), kPage) == wire::Format::Unknown, "HELLO detected as a CRIU header");
}

// No recorded CRIU session (client side: requests) starts with the magic: a stock client is never taken for lazyd.
void test_recorded_sessions_never_hello() {
  int checked = 0;
  for (const char* version : {"4.1.1", "4.2.1"}) {
    for (const char* session : {"remote-lazy", "upload"}) {
      const std::string file = fixtures::path(version, session, "client-to-server.bin");
      if (access(file.c_str(), R_OK) != 0) continue;
      const std::string data = fixtures::read(version, session, "client-to-server.bin");
      CHECK(!wire::starts_with_hello(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
            "%s starts with the HELLO magic", file.c_str());
      checked++;
    }
  }
  CHECK(checked == 4, "expected a recorded lazy-fetch session of each CRIU version (found %d)", checked);
}

void test_hello_binds() {
  TwoCheckpoints staged;
  const Outcome o = run(cat({hello(0x5a), get24(100, kStagedVaddr, 2)}), &staged, false);
  CHECK(o.status == LazySession::Status::kDone, "bound session: %s", o.error.c_str());
  const wire::HelloReply r = reply_of(o);
  CHECK(r.status == 0 && r.checkpoint == 5 && r.features == wire::kFeatureBind, "granted, bound to #5, no checksums");
  CHECK(o.out.size() == wire::kHelloReplySize + wire::HEADER_SIZE_V24 + 2 * kPage, "one reply after the HELLO's");
  CHECK(o.out.back() == 0xaa, "checkpoint #5's pages");
  CHECK(o.stats.hello && !o.stats.link_refused, "stats");
}

void test_other_checkpoint_refused() {
  TwoCheckpoints staged;
  Outcome o = run(cat({hello(0x5a), get24(200, kOtherVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kFailed && o.stats.link_refused, "GET of #6 with #5's token refused");
  CHECK(o.error.find("one token, one checkpoint") != std::string::npos, "error: %s", o.error.c_str());
  // Nor the -D images: the token names one staged checkpoint and nothing else.
  o = run(cat({hello(0x5a), get24(1, kImageVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kFailed && o.stats.link_refused, "GET of the images refused");
}

void test_unknown_token_refused() {
  TwoCheckpoints staged;
  const Outcome o = run(cat({hello(0x77), get24(100, kStagedVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kFailed && o.stats.link_refused, "unknown token: %s", o.error.c_str());
  const wire::HelloReply r = reply_of(o);
  CHECK(r.status == -EACCES && r.checkpoint == 0, "refusing reply");
  CHECK(o.out.size() == wire::kHelloReplySize, "nothing served behind a refused HELLO");
}

void test_version_refused() {
  TwoCheckpoints staged;
  const Outcome o = run(hello(0x5a, 99), &staged, false);
  CHECK(o.status == LazySession::Status::kFailed && reply_of(o).status == -EPROTONOSUPPORT, "version 99");
}

void test_require_token() {
  TwoCheckpoints staged;
  Outcome o = run(get24(100, kStagedVaddr, 1), &staged, true);
  CHECK(o.status == LazySession::Status::kFailed && o.stats.link_refused && o.out.empty(), "stock client refused");
  CHECK(o.error.find("--require-link-token") != std::string::npos, "error names the flag: %s", o.error.c_str());
  o = run(cat({hello(0x6b), get24(200, kOtherVaddr, 1)}), &staged, true);
  CHECK(o.status == LazySession::Status::kDone && o.out.back() == 0xbb, "HELLO client served: %s", o.error.c_str());
}

// Without HELLO a session is what it was: the staged pid and the images both served, no extension byte out.
void test_stock_unchanged() {
  TwoCheckpoints staged;
  Outcome o = run(cat({get24(100, kStagedVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kDone && o.out.size() == wire::HEADER_SIZE_V24 + kPage, "stock staged GET");
  CHECK(!wire::starts_with_hello(o.out.data(), o.out.size()) && !o.stats.hello, "no extension byte");
  o = run(cat({get24(1, kImageVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kDone && o.out.back() == 0x11, "stock image GET");
  // HELLO is only ever first: later, its bytes are an unknown command, as before.
  o = run(cat({get24(1, kImageVaddr, 1), hello(0x5a)}), &staged, false);
  CHECK(o.status == LazySession::Status::kFailed && o.error.find("unknown command") != std::string::npos, "late HELLO: %s",
        o.error.c_str());
}

// The client side: PageClient sends the HELLO ahead of the first GET and reads its reply ahead of the GET's;
// without open_with_hello() its first bytes are the GET, as always; a refusing reply fails it with the reason.
Bytes read_all(int fd, size_t want) {
  Bytes got;
  uint8_t buf[65536];
  for (int rounds = 0; got.size() < want && rounds < 100000; rounds++) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.insert(got.end(), buf, buf + n);
  }
  return got;
}

struct ClientRun {
  int rc = 0;
  std::string error;
  Bytes sent;
  size_t replies = 0;
};

// One GET of 1 page at kStagedVaddr of pid 100; the "server" answers with server_reply (then the page, if granted).
ClientRun client_run(bool with_hello, const Bytes& server_reply, bool then_page) {
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  PageClient client(wire::Format::V24, kPage);
  CHECK(client.adopt(sv[0]) == 0, "adopt");
  if (with_hello) {
    wire::Hello h;
    h.features = wire::kFeatureBind;
    h.token.fill(0x5a);
    client.open_with_hello(h);
  }
  Bytes page(kPage);
  PageRequest request;
  request.cookie = 1;
  request.pid = 100;
  request.img_vaddr = kStagedVaddr;
  request.nr_pages = 1;
  request.buf = page.data();
  ClientRun out;
  CHECK(client.submit(request) == 0, "submit: %s", client.error().c_str());
  out.sent = read_all(sv[1], (with_hello ? wire::kHelloSize : 0) + wire::HEADER_SIZE_V24);
  Bytes answer = server_reply;
  if (then_page) {
    Bytes head = get24(100, kStagedVaddr, 1);
    uint32_t cmd = wire::GET_REPLY_CMD;
    memcpy(head.data(), &cmd, 4);
    answer.insert(answer.end(), head.begin(), head.end());
    answer.insert(answer.end(), kPage, 0xcd);
  }
  CHECK(send(sv[1], answer.data(), answer.size(), 0) == static_cast<ssize_t>(answer.size()), "send");
  std::vector<PageReply> done;
  for (int rounds = 0; rounds < 100000 && done.empty(); rounds++) {
    out.rc = client.pump(&done);
    if (out.rc < 0) break;
  }
  out.replies = done.size();
  out.error = client.error();
  if (out.replies == 1) CHECK(page[0] == 0xcd && page[kPage - 1] == 0xcd, "the page landed in the request's buffer");
  close(sv[1]);
  return out;
}

Bytes hello_reply(int32_t status, uint64_t checkpoint) {
  wire::HelloReply r;
  r.status = status;
  r.features = status == 0 ? wire::kFeatureBind : 0;
  r.checkpoint = checkpoint;
  Bytes out(wire::kHelloReplySize);
  wire::encode_hello_reply(r, out.data());
  return out;
}

// Faults first on the server too: a session that is not a lazyd priority connection sends at most
// LazySession::kSendSliceBytes per wake-up (the server's loop then serves the other sessions; the rest goes out on
// the next), a priority connection all the socket takes; either way every byte goes out, in order.
void test_send_slices() {
  OneCheckpoint staged(staged_checkpoint(7, 300, kStagedVaddr, 0xcc, 0x7c, 256));
  static std::unique_ptr<PageIndex> index = image_index();
  const size_t whole = wire::kHelloReplySize + wire::HEADER_SIZE_V24 + 256 * kPage;
  for (bool priority : {false, true}) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    // Room for the whole reply in the socket, so that only the slice can stop a wake-up's sending.
    const int room = 8 << 20;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUFFORCE, &room, sizeof room) == 0,
          "SO_SNDBUFFORCE needs CAP_NET_ADMIN (run the native tests as root): %s", strerror(errno));
    SessionLimits limits;
    limits.max_request_pages = 256;
    limits.max_queued_replies = 64;
    limits.max_queued_bytes = 4 << 20;
    LazySession session(sv[0], *index, limits, &staged);
    const Bytes input = cat({hello(0x7c, wire::kLinkVersion, wire::kFeatureBind | (priority ? wire::kFeaturePriority : 0)),
                             get24(300, kStagedVaddr, 256)});
    CHECK(send(sv[1], input.data(), input.size(), 0) == static_cast<ssize_t>(input.size()), "send");
    Bytes out;
    auto take = [&] { read_available(sv[1], &out); };
    CHECK(session.on_readable() == LazySession::Status::kOpen, "first wake-up: %s", session.error().c_str());
    take();
    if (priority) {
      CHECK(out.size() == whole && !session.wants_write(), "a priority connection's reply at once: %zu of %zu", out.size(), whole);
    } else {
      CHECK(out.size() < whole && out.size() <= wire::kHelloReplySize + wire::HEADER_SIZE_V24 + LazySession::kSendSliceBytes,
            "one slice on the first wake-up: %zu of %zu", out.size(), whole);
      CHECK(session.wants_write(), "the rest is still to send");
    }
    int wakeups = 1;
    while (session.wants_write()) {
      CHECK(++wakeups < 100, "never done");
      CHECK(session.on_writable() == LazySession::Status::kOpen, "wake-up: %s", session.error().c_str());
      take();
    }
    CHECK(out.size() == whole, "every byte: %zu of %zu", out.size(), whole);
    bool pages_right = true;
    for (size_t i = wire::kHelloReplySize + wire::HEADER_SIZE_V24; i < out.size(); i++) pages_right &= out[i] == 0xcc;
    CHECK(pages_right, "the pages' bytes, in order");
    std::printf("send slices: %s connection, 1 MiB reply in %d wake-ups\n", priority ? "priority" : "main", wakeups);
    if (!priority) CHECK(wakeups >= static_cast<int>((256 * kPage) / LazySession::kSendSliceBytes), "%d wake-ups", wakeups);
    close(sv[1]);  // sv[0] is the session's
  }
}

// A small staged reply leaves in one sendmsg (header, pages, trailer: one segment, LazySession::kGatherMaxBytes);
// a socket that takes only part of it gets the rest by the ordinary path, byte for byte, trailer last.
void test_gathered_replies() {
  constexpr uint32_t kPages = 16;
  Bytes bytes(kPages * kPage);
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = pattern_byte(i);
  OneCheckpoint staged(staged_checkpoint_of(8, 400, kStagedVaddr, bytes, 0x8d));
  static std::unique_ptr<PageIndex> index = image_index();
  for (int sndbuf : {0, 4096}) {  // 0: the default room (one sendmsg each); 4096: every reply sent in parts
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    if (sndbuf) CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0, "SO_SNDBUF");
    SessionLimits limits;
    limits.max_request_pages = 64;
    limits.max_queued_replies = 64;
    limits.max_queued_bytes = 1 << 20;
    LazySession session(sv[0], *index, limits, &staged);
    const Bytes input = cat({hello(0x8d, wire::kLinkVersion, wire::kFeatureBind | wire::kFeatureChecksum | wire::kFeaturePriority),
                             get24(400, kStagedVaddr, 1), get24(400, kStagedVaddr + kPage, kPages - 1)});
    CHECK(send(sv[1], input.data(), input.size(), 0) == static_cast<ssize_t>(input.size()), "send");
    shutdown(sv[1], SHUT_WR);
    Bytes out;
    LazySession::Status status = LazySession::Status::kOpen;
    for (int rounds = 0; status == LazySession::Status::kOpen; rounds++) {
      CHECK(rounds < 100000, "the session never ended");
      status = session.on_readable();
      if (status == LazySession::Status::kOpen && session.wants_write()) status = session.on_writable();
      read_available(sv[1], &out);
    }
    CHECK(status == LazySession::Status::kDone, "gathered session (SO_SNDBUF %d): %s", sndbuf, session.error().c_str());
    const size_t first = wire::kHelloReplySize;
    const size_t second = first + wire::HEADER_SIZE_V24 + kPage + 4;
    CHECK(out.size() == second + wire::HEADER_SIZE_V24 + (kPages - 1) * kPage + 4 * (kPages - 1), "two replies: %zu bytes",
          out.size());
    bool right = true;
    for (size_t i = 0; i < kPage; i++) right &= out[first + wire::HEADER_SIZE_V24 + i] == pattern_byte(i);
    for (size_t i = 0; i < (kPages - 1) * kPage; i++) right &= out[second + wire::HEADER_SIZE_V24 + i] == pattern_byte(kPage + i);
    CHECK(right, "the pages' bytes, in order (SO_SNDBUF %d)", sndbuf);
    const uint8_t* trailer = out.data() + second + wire::HEADER_SIZE_V24 + (kPages - 1) * kPage;
    CHECK(wire::checksum_at(out.data() + first + wire::HEADER_SIZE_V24 + kPage, 0) ==
              crc32c(out.data() + first + wire::HEADER_SIZE_V24, kPage), "the first reply's trailer");
    for (uint32_t p = 0; p + 1 < kPages; p++) {
      CHECK(wire::checksum_at(trailer, p) == crc32c(out.data() + second + wire::HEADER_SIZE_V24 + p * kPage, kPage),
            "page %u's checksum", p);
    }
    close(sv[1]);
  }
}

// A drain session checksums at most a slice's worth of pages per wake-up while it reads GETs (a priority GET waits
// behind no more); a priority connection reads every GET the socket holds.
void test_checksum_slices() {
  OneCheckpoint staged(staged_checkpoint(9, 500, kStagedVaddr, 0xce, 0x9e, 256));
  static std::unique_ptr<PageIndex> index = image_index();
  const uint32_t per_get = static_cast<uint32_t>(LazySession::kSendSliceBytes / kPage);
  for (bool priority : {false, true}) {
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    SessionLimits limits;
    limits.max_request_pages = 256;
    limits.max_queued_replies = 64;
    limits.max_queued_bytes = 4 << 20;
    LazySession session(sv[0], *index, limits, &staged);
    Bytes input = hello(0x9e, wire::kLinkVersion,
                        wire::kFeatureBind | wire::kFeatureChecksum | (priority ? wire::kFeaturePriority : 0));
    for (uint32_t i = 0; i < 4; i++) input = cat({input, get24(500, kStagedVaddr + i * per_get * kPage, per_get)});
    CHECK(send(sv[1], input.data(), input.size(), 0) == static_cast<ssize_t>(input.size()), "send");
    CHECK(session.on_readable() == LazySession::Status::kOpen, "first wake-up: %s", session.error().c_str());
    const uint64_t parsed = session.stats().gets;
    CHECK(priority ? parsed == 4 : parsed == 1, "%s connection: %lu GETs read on the first wake-up",
          priority ? "priority" : "drain", static_cast<unsigned long>(parsed));
    Bytes out;
    for (int rounds = 0; session.stats().gets < 4 || session.wants_write(); rounds++) {
      CHECK(rounds < 10000, "never done");
      read_available(sv[1], &out);
      CHECK(session.on_writable() == LazySession::Status::kOpen, "wake-up: %s", session.error().c_str());
    }
    read_available(sv[1], &out);
    const size_t reply = wire::HEADER_SIZE_V24 + per_get * kPage + 4 * per_get;
    CHECK(out.size() == wire::kHelloReplySize + 4 * reply, "every reply: %zu bytes", out.size());
    std::printf("checksum slices: %s connection, %lu of 4 GETs read on the first wake-up\n", priority ? "priority" : "drain",
                static_cast<unsigned long>(parsed));
    close(sv[1]);
  }
}

void test_client() {
  // Stock: the first bytes are the GET.
  ClientRun stock = client_run(false, {}, true);
  CHECK(stock.rc == 0 && stock.replies == 1, "stock client: %s", stock.error.c_str());
  CHECK(stock.sent == get24(100, kStagedVaddr, 1), "a stock client sends the GET and nothing else");

  // HELLO first, then the GET; the reply's page after the HELLO reply.
  ClientRun linked = client_run(true, hello_reply(0, 5), true);
  CHECK(linked.rc == 0 && linked.replies == 1, "linked client: %s", linked.error.c_str());
  CHECK(linked.sent == cat({hello(0x5a), get24(100, kStagedVaddr, 1)}), "HELLO, then the GET");

  // Refused: the client fails with why, and installs nothing.
  ClientRun refused = client_run(true, hello_reply(-EACCES, 0), false);
  CHECK(refused.rc == -EACCES && refused.replies == 0, "refused: rc %d", refused.rc);
  CHECK(refused.error.find("lazyd-link.json") != std::string::npos, "names the file: %s", refused.error.c_str());

  // Something else than a HELLO reply (a server that is not lazyd): fails, nothing installed.
  Bytes not_lazyd(wire::kHelloReplySize, 0);
  ClientRun other = client_run(true, not_lazyd, false);
  CHECK(other.rc == -EPROTO && other.replies == 0, "not a HELLO reply: rc %d", other.rc);
  CHECK(other.error.find("--link stock") != std::string::npos, "says the fix: %s", other.error.c_str());
}

// ---- Feature checksum (§7.4) ----

void test_crc32c() {
  const char* vector = "123456789";
  // The first call builds the 3-way path's tables (a restore's first fault pays it): printed, not timed.
  const auto first_start = std::chrono::steady_clock::now();
  const uint32_t first = crc32c(vector, 9);
  const double first_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - first_start).count();
  CHECK(first == 0xe3069283u, "CRC32C check value: %08x", first);
  CHECK(crc32c_portable(vector, 9) == 0xe3069283u, "table CRC32C check value");
  CHECK(crc32c("", 0) == 0, "empty");
  Bytes data(3 * kPage + 13);
  uint32_t x = 12345;
  for (uint8_t& b : data) b = static_cast<uint8_t>((x = x * 1103515245 + 12345) >> 16);
  for (size_t len : {size_t{1}, size_t{7}, size_t{8}, size_t{9}, size_t{4079}, size_t{4080}, size_t{4081}, size_t{4096},
                     size_t{8160}, data.size()}) {
    CHECK(crc32c(data.data(), len) == crc32c_portable(data.data(), len), "hardware and table agree at %zu", len);
  }
  const uint32_t whole = crc32c(data.data(), data.size());
  CHECK(crc32c(data.data() + 1000, data.size() - 1000, crc32c(data.data(), 1000)) == whole, "chained");
  std::printf("crc32c: %s, first call %.0f us\n", crc32c_hardware() ? "sse4.2" : "table", first_us);
}

void test_trailer_codec() {
  const uint32_t crcs[3] = {0x01020304, 0xdeadbeef, 0};
  uint8_t trailer[3 * wire::kChecksumSize];
  wire::encode_checksums(crcs, 3, trailer);
  CHECK(trailer[0] == 0x04 && trailer[3] == 0x01, "native (little-endian) u32");
  for (size_t i = 0; i < 3; i++) CHECK(wire::checksum_at(trailer, i) == crcs[i], "round trip %zu", i);
  CHECK(wire::checksum_trailer_size(5) == 20, "4 bytes a page");

  // Built from pieces of any size: the same as each page's CRC.
  Bytes pages(3 * kPage);
  for (size_t i = 0; i < pages.size(); i++) pages[i] = static_cast<uint8_t>(i * 7 + i / kPage);
  wire::ChecksumBuilder builder;
  CHECK(!builder.active(), "inactive until started");
  builder.start(kPage, 3);
  size_t at = 0;
  for (size_t piece : {size_t{1}, size_t{4095}, size_t{5000}, size_t{3}, size_t{3 * kPage}}) {
    const size_t take = std::min(piece, pages.size() - at);
    CHECK(!builder.complete(), "complete too early at %zu", at);
    builder.feed(pages.data() + at, take);
    at += take;
  }
  CHECK(builder.complete() && builder.trailer().size() == 12, "complete");
  for (size_t i = 0; i < 3; i++) {
    CHECK(wire::checksum_at(builder.trailer().data(), i) == crc32c(pages.data() + i * kPage, kPage), "page %zu", i);
  }
  wire::ChecksumCheck ok = wire::check_pages(pages.data(), 3, kPage, builder.trailer().data());
  CHECK(ok.bad == 0, "clean pages pass");
  pages[kPage + 17] ^= 0x10;
  pages[2 * kPage] ^= 0x01;
  wire::ChecksumCheck bad = wire::check_pages(pages.data(), 3, kPage, builder.trailer().data());
  CHECK(bad.bad == 2 && bad.first == 1 && bad.last == 2, "two flipped pages: %" PRIu64 " bad", bad.bad);
  CHECK(bad.actual == crc32c(pages.data() + kPage, kPage) && bad.expected != bad.actual, "the first bad page's values");
}

// A session granted checksum: each reply's pages are followed by their CRC32C (from the images and from a staged
// store); a HELLO without the bit gets no trailer.
void test_server_checksums() {
  TwoCheckpoints staged;
  const uint64_t both = wire::kFeatureBind | wire::kFeatureChecksum;
  Outcome o = run(cat({hello(0x5a, wire::kLinkVersion, both), get24(100, kStagedVaddr, 3), get24(100, kStagedVaddr + 3 * kPage, 4)}),
                  &staged, false);
  CHECK(o.status == LazySession::Status::kDone, "checksum session: %s", o.error.c_str());
  CHECK(reply_of(o).features == both, "checksum granted");
  // 3 pages, then the clamped reply: 1 page (the entry has 4).
  const size_t first = wire::kHelloReplySize, second = first + wire::HEADER_SIZE_V24 + 3 * kPage + 12;
  CHECK(o.out.size() == second + wire::HEADER_SIZE_V24 + kPage + 4, "two replies with trailers: %zu bytes", o.out.size());
  const Bytes page(kPage, 0xaa);
  const uint32_t want = crc32c(page.data(), kPage);
  for (size_t i = 0; i < 3; i++) {
    CHECK(wire::checksum_at(o.out.data() + first + wire::HEADER_SIZE_V24 + 3 * kPage, i) == want, "staged page %zu", i);
  }
  CHECK(wire::checksum_at(o.out.data() + second + wire::HEADER_SIZE_V24 + kPage, 0) == want, "the clamped reply's page");

  // A HELLO without the bit: the replies as before, no trailer.
  o = run(cat({hello(0x5a), get24(100, kStagedVaddr, 1)}), &staged, false);
  CHECK(o.status == LazySession::Status::kDone && o.out.size() == wire::kHelloReplySize + wire::HEADER_SIZE_V24 + kPage,
        "no checksum asked: no trailer");
}

// A relayed checkpoint whose pages are held by reference in pipes: a checksum session reads them into user space
// (copy_out) and sends the CRC32C of the bytes it sent.

// A relay store whose pages [0, pages) are all in (held by reference, marked present), still filling.
std::shared_ptr<RelayStore> relay_store_filled(uint64_t pid, uint64_t vaddr, uint64_t pages) {
  auto store = std::make_shared<RelayStore>(kPage, std::make_shared<MemoryBudget>(pages * kPage + (1 << 20)), true);
  std::string error;
  CHECK(store->init({RelayTask{pid, {RelayRange{vaddr, pages}}}}, &error) == 0, "relay init: %s", error.c_str());
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0, "nonblock");
  const uint64_t total = pages * kPage;
  std::thread writer([&] {
    Bytes chunk(1 << 16);
    for (uint64_t at = 0; at < total; at += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); i++) chunk[i] = pattern_byte(at + i);
      for (size_t off = 0; off < chunk.size();) {
        ssize_t n = write(sv[1], chunk.data() + off, chunk.size() - off);
        if (n <= 0) return;
        off += static_cast<size_t>(n);
      }
    }
  });
  uint64_t got = 0;
  while (got < total) {
    ssize_t n = store->take_from(sv[0], got, static_cast<size_t>(total - got), &error);
    if (n == -EAGAIN) {
      pollfd pfd{sv[0], POLLIN, 0};
      poll(&pfd, 1, 1000);
      continue;
    }
    CHECK(n > 0, "relay take_from: %zd %s", n, error.c_str());
    got += static_cast<uint64_t>(n);
  }
  writer.join();
  close(sv[0]);
  close(sv[1]);
  CHECK(store->mark_present(0, pages) == 0, "relay mark_present");
  CHECK(store->bytes_referenced() == total, "held by reference: %" PRIu64 " of %" PRIu64, store->bytes_referenced(), total);
  return store;
}

std::shared_ptr<StagedCheckpoint> checkpoint_of_store(std::shared_ptr<PageStore> store, uint8_t token_byte) {
  auto checkpoint = std::make_shared<StagedCheckpoint>();
  checkpoint->id = 7;
  checkpoint->store = std::move(store);
  checkpoint->token.fill(token_byte);
  checkpoint->has_token = true;
  return checkpoint;
}

std::shared_ptr<StagedCheckpoint> relay_checkpoint(uint64_t pid, uint64_t vaddr, uint64_t pages, uint8_t token_byte) {
  auto store = relay_store_filled(pid, vaddr, pages);
  CHECK(store->finish(true, "") == 0, "relay finish");
  return checkpoint_of_store(store, token_byte);
}

void test_relay_checksums() {
  OneCheckpoint relayed(relay_checkpoint(300, kStagedVaddr, 16, 0x7c));
  const uint64_t both = wire::kFeatureBind | wire::kFeatureChecksum;
  // Twice the same pages: serving from the pipes never consumes them.
  Outcome o = run(cat({hello(0x7c, wire::kLinkVersion, both), get24(300, kStagedVaddr + kPage, 8), get24(300, kStagedVaddr + kPage, 8)}),
                  &relayed, false);
  CHECK(o.status == LazySession::Status::kDone, "relay checksum session: %s", o.error.c_str());
  const size_t reply = wire::HEADER_SIZE_V24 + 8 * kPage + 8 * wire::kChecksumSize;
  CHECK(o.out.size() == wire::kHelloReplySize + 2 * reply, "two replies with trailers: %zu bytes", o.out.size());
  for (size_t r = 0; r < 2; r++) {
    const uint8_t* pages = o.out.data() + wire::kHelloReplySize + r * reply + wire::HEADER_SIZE_V24;
    uint64_t wrong = 0;
    for (uint64_t i = 0; i < 8 * kPage; i++) wrong += pages[i] != pattern_byte(kPage + i);
    CHECK(wrong == 0, "reply %zu: %" PRIu64 " relay bytes wrong", r, wrong);
    CHECK(wire::check_pages(pages, 8, kPage, pages + 8 * kPage).bad == 0, "the trailer matches the pages sent");
  }
}

// A session over a socketpair whose send buffer is small, read a few KiB at a time: the session finds its socket
// full again and again (a drain over a busy link). The session owns sv[0].
struct SmallBufferSession {
  int sv[2] = {-1, -1};
  std::unique_ptr<LazySession> session;
  Bytes out;
  SmallBufferSession(const StagedLookup* staged, uint64_t max_queued_bytes) {
    static std::unique_ptr<PageIndex> index = image_index();
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    const int small = 8192;
    CHECK(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0, "SO_SNDBUF: %s", strerror(errno));
    SessionLimits limits;
    limits.max_request_pages = 64;
    limits.max_queued_replies = 64;
    limits.max_queued_bytes = max_queued_bytes;
    session = std::make_unique<LazySession>(sv[0], *index, limits, staged);
  }
  ~SmallBufferSession() { close(sv[1]); }
  void request(const Bytes& input) {
    CHECK(send(sv[1], input.data(), input.size(), 0) == static_cast<ssize_t>(input.size()), "send");
  }
  // Reads what the socket holds, up to less than it takes, then lets the session write if it wants to.
  LazySession::Status pump(LazySession::Status status) {
    uint8_t buf[3000];
    ssize_t got = recv(sv[1], buf, sizeof buf, MSG_DONTWAIT);
    if (got > 0) out.insert(out.end(), buf, buf + got);
    return session->wants_write() ? session->on_writable() : status;
  }
};

// The same over a socket that is full most of the time (a drain over a busy link): the last chunk of each reply
// completes its checksums before the socket has taken all of it, and its bytes still go out before the trailer.
void test_relay_checksums_socket_full() {
  OneCheckpoint relayed(relay_checkpoint(300, kStagedVaddr, 96, 0x7c));
  SmallBufferSession s(&relayed, 1 << 20);
  const uint64_t both = wire::kFeatureBind | wire::kFeatureChecksum;
  const uint32_t sizes[] = {32, 1, 48, 15};  // 128 KiB, a page, 192 KiB, 60 KiB: each in one copied chunk
  Bytes input = hello(0x7c, wire::kLinkVersion, both);
  uint64_t first = 0;
  for (uint32_t n : sizes) {
    input = cat({input, get24(300, kStagedVaddr + first * kPage, n)});
    first += n;
  }
  s.request(input);
  const Bytes& out = s.out;
  size_t expected = wire::kHelloReplySize;
  for (uint32_t n : sizes) expected += wire::HEADER_SIZE_V24 + n * kPage + n * wire::kChecksumSize;
  LazySession::Status status = s.session->on_readable();
  for (int rounds = 0; out.size() < expected; rounds++) {
    CHECK(status == LazySession::Status::kOpen, "session: %s", s.session->error().c_str());
    CHECK(rounds < 100000, "stuck at %zu of %zu bytes", out.size(), expected);
    status = s.pump(status);
  }
  CHECK(out.size() == expected, "every reply's bytes: %zu of %zu", out.size(), expected);
  size_t at = wire::kHelloReplySize;
  first = 0;
  for (uint32_t n : sizes) {
    const wire::Header h = wire::decode(wire::Format::V24, out.data() + at);
    CHECK(h.cmd == wire::GET_REPLY_CMD && h.nr_pages == n && h.vaddr == kStagedVaddr + first * kPage,
          "a reply header at byte %zu (cmd 0x%x, %" PRIu64 " pages)", at, static_cast<unsigned>(h.cmd), static_cast<uint64_t>(h.nr_pages));
    const uint8_t* pages = out.data() + at + wire::HEADER_SIZE_V24;
    uint64_t wrong = 0;
    for (uint64_t i = 0; i < n * kPage; i++) wrong += pages[i] != pattern_byte(first * kPage + i);
    CHECK(wrong == 0, "reply of %u pages: %" PRIu64 " bytes wrong", n, wrong);
    CHECK(wire::check_pages(pages, n, kPage, pages + n * kPage).bad == 0, "its trailer follows its pages");
    at += wire::HEADER_SIZE_V24 + n * kPage + n * wire::kChecksumSize;
    first += n;
  }
}

// A relay that fails with a reset while replies are on their way (the dump resumes the tasks, so the pages held by
// reference may change): the session stops at the void with the store's reason, and what it sent is right — the
// bytes it had already read or teed, never the memfd's zeros behind the dropped pipes — and nothing is complete
// that was not sent before.
void test_relay_void_mid_reply(bool checksums) {
  constexpr uint32_t kReplies = 4, kReplyPages = 64;  // 1 MiB: more than a session reads ahead (256 KiB a pass)
  static_assert(kReplyPages <= 64, "SmallBufferSession's request limit");
  auto store = relay_store_filled(300, kStagedVaddr, kReplies * kReplyPages);
  OneCheckpoint relayed(checkpoint_of_store(store, 0x7c));
  SmallBufferSession s(&relayed, 4 << 20);
  Bytes input = hello(0x7c, wire::kLinkVersion, wire::kFeatureBind | (checksums ? wire::kFeatureChecksum : 0));
  for (uint32_t r = 0; r < kReplies; r++) input = cat({input, get24(300, kStagedVaddr + r * kReplyPages * kPage, kReplyPages)});
  s.request(input);
  const size_t trailer = checksums ? kReplyPages * wire::kChecksumSize : 0;
  const size_t reply = wire::HEADER_SIZE_V24 + kReplyPages * kPage + trailer;
  Bytes& out = s.out;
  LazySession::Status status = s.session->on_readable();
  for (int rounds = 0; out.size() < wire::kHelloReplySize + reply / 2; rounds++) {  // half of the first reply out
    CHECK(status == LazySession::Status::kOpen, "session: %s", s.session->error().c_str());
    CHECK(rounds < 100000, "stuck at %zu bytes", out.size());
    status = s.pump(status);
  }
  CHECK(store->finish(false, "the test reset the dump", true) == 0, "void the store");
  for (int rounds = 0; status == LazySession::Status::kOpen; rounds++) {
    CHECK(rounds < 100000, "the session went on after the void: %zu bytes out", out.size());
    status = s.pump(status);
  }
  read_available(s.sv[1], &out);
  CHECK(status == LazySession::Status::kFailed, "the session failed (status %d)", static_cast<int>(status));
  CHECK(s.session->error().find("void") != std::string::npos, "the reason says the checkpoint is void: %s", s.session->error().c_str());
  CHECK(out.size() < wire::kHelloReplySize + kReplies * reply, "%zu bytes out: every reply sent in full after the void", out.size());
  uint64_t wrong = 0, checked = 0;
  for (size_t at = wire::kHelloReplySize, r = 0; at < out.size(); at += reply, r++) {
    if (out.size() - at < wire::HEADER_SIZE_V24) break;
    const wire::Header h = wire::decode(wire::Format::V24, out.data() + at);
    CHECK(h.cmd == wire::GET_REPLY_CMD && h.vaddr == kStagedVaddr + r * kReplyPages * kPage, "reply %zu's header", r);
    const uint64_t have = std::min<uint64_t>(out.size() - at - wire::HEADER_SIZE_V24, kReplyPages * kPage);
    for (uint64_t i = 0; i < have; i++) wrong += out[at + wire::HEADER_SIZE_V24 + i] != pattern_byte(r * kReplyPages * kPage + i);
    checked += have;
  }
  CHECK(checked > 0 && wrong == 0, "%" PRIu64 " of %" PRIu64 " page bytes out were wrong", wrong, checked);
}

// Client: a flipped bit is re-fetched (only the bad run) and the reply handed on once clean; a second flip fails.
struct Scripted {
  int sv[2];
  std::unique_ptr<PageClient> client;
  Bytes page_buf;
  std::vector<PageReply> done;
  int rc = 0;
};

Bytes server_reply(uint64_t vaddr, const Bytes& pages, int flip_page) {
  Bytes head = get24(100, vaddr, static_cast<uint32_t>(pages.size() / kPage));
  const uint32_t cmd = wire::GET_REPLY_CMD;
  memcpy(head.data(), &cmd, 4);
  wire::ChecksumBuilder builder;
  builder.start(kPage, pages.size() / kPage);
  builder.feed(pages.data(), pages.size());
  Bytes sent = pages;
  if (flip_page >= 0) sent[static_cast<size_t>(flip_page) * kPage + 100] ^= 0x04;
  return cat({head, sent, builder.trailer()});
}

void pump_until(Scripted& s, const std::function<bool()>& until) {
  for (int rounds = 0; rounds < 100000 && !until(); rounds++) {
    s.rc = s.client->pump(&s.done);
    if (s.rc < 0) return;
  }
}

void test_client_refetch(bool flip_twice) {
  Scripted s;
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s.sv) == 0, "socketpair");
  s.client = std::make_unique<PageClient>(wire::Format::V24, kPage);
  CHECK(s.client->adopt(s.sv[0]) == 0, "adopt");
  wire::Hello h;
  h.features = wire::kFeatureBind | wire::kFeatureChecksum;
  h.token.fill(0x5a);
  s.client->open_with_hello(h);
  s.page_buf.assign(4 * kPage, 0);
  PageRequest request;
  request.cookie = 9;
  request.pid = 100;
  request.img_vaddr = kStagedVaddr;
  request.nr_pages = 4;
  request.buf = s.page_buf.data();
  CHECK(s.client->submit(request) == 0, "submit");
  CHECK(read_all(s.sv[1], wire::kHelloSize + wire::HEADER_SIZE_V24).size() == wire::kHelloSize + wire::HEADER_SIZE_V24, "HELLO+GET");
  Bytes pages(4 * kPage);
  for (size_t i = 0; i < pages.size(); i++) pages[i] = static_cast<uint8_t>(i / kPage + 1);
  wire::HelloReply granted;
  granted.features = wire::kFeatureBind | wire::kFeatureChecksum;
  granted.checkpoint = 5;
  Bytes answer(wire::kHelloReplySize);
  wire::encode_hello_reply(granted, answer.data());
  answer = cat({answer, server_reply(kStagedVaddr, pages, 2)});  // page 2 flipped
  CHECK(send(s.sv[1], answer.data(), answer.size(), 0) == static_cast<ssize_t>(answer.size()), "send");
  Bytes again;
  pump_until(s, [&] {
    uint8_t buf[64];
    ssize_t n = recv(s.sv[1], buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) again.insert(again.end(), buf, buf + n);
    return again.size() >= wire::HEADER_SIZE_V24;
  });
  CHECK(s.rc == 0 && s.client->checksums(), "after one mismatch: %s", s.client->error().c_str());
  CHECK(s.done.empty(), "the reply with a bad page is not handed on");
  CHECK(s.client->checksum_mismatches() == 1 && s.client->in_flight() == 1, "one mismatch counted, re-fetch in flight");
  CHECK(s.client->last_checksum_mismatch().find("0x7e0000002000") != std::string::npos &&
            s.client->last_checksum_mismatch().find("pid 100") != std::string::npos,
        "names pid and address: %s", s.client->last_checksum_mismatch().c_str());
  CHECK(again == get24(100, kStagedVaddr + 2 * kPage, 1), "re-fetches only the bad page");

  const Bytes bad_page(pages.begin() + 2 * kPage, pages.begin() + 3 * kPage);
  const Bytes second = server_reply(kStagedVaddr + 2 * kPage, bad_page, flip_twice ? 0 : -1);
  CHECK(send(s.sv[1], second.data(), second.size(), 0) == static_cast<ssize_t>(second.size()), "send");
  pump_until(s, [&] { return !s.done.empty(); });
  if (flip_twice) {
    CHECK(s.rc == -EBADMSG && s.done.empty(), "a second mismatch fails: rc %d", s.rc);
    CHECK(s.client->error().find("pid 100 from 0x7e0000002000") != std::string::npos &&
              s.client->error().find("second time") != std::string::npos,
          "one line naming pid, address and cause: %s", s.client->error().c_str());
    CHECK(s.client->checksum_mismatches() == 2, "both counted");
  } else {
    CHECK(s.rc == 0 && s.done.size() == 1, "clean re-fetch: %s", s.client->error().c_str());
    const PageReply& r = s.done[0];
    CHECK(r.cookie == 9 && r.img_vaddr == kStagedVaddr && r.nr_pages == 4 && r.buf == s.page_buf.data(), "the first request's reply");
    CHECK(s.page_buf == pages, "every page right");
    CHECK(s.client->in_flight() == 0 && s.client->checksum_mismatches() == 1, "nothing left in flight");
  }
  close(s.sv[1]);
}

}  // namespace

// ---- --measure: what the checksums cost ----

double crc_gib_per_s(uint32_t (*fn)(const void*, size_t, uint32_t)) {
  Bytes page(64 * kPage);
  for (size_t i = 0; i < page.size(); i++) page[i] = pattern_byte(i);
  const uint64_t total = 4ull << 30;
  uint32_t sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t done = 0; done < total; done += page.size()) {
    for (size_t p = 0; p < page.size(); p += kPage) sink ^= fn(page.data() + p, kPage, 0);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (sink == 0x12345678) std::printf(" ");
  return static_cast<double>(total) / (1ull << 30) / s;
}

// A LazySession on loopback TCP serving `rounds` passes over every page of checkpoint in GETs of 64 pages; the
// client thread reads and drops the bytes. Returns MiB/s of page bytes.
double serve_mib_per_s(const std::shared_ptr<StagedCheckpoint>& checkpoint, uint64_t pid, uint64_t vaddr, uint64_t pages,
                       bool checksums, int rounds) {
  static std::unique_ptr<PageIndex> index = image_index();
  OneCheckpoint lookup(checkpoint);
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  CHECK(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && listen(listener, 1) == 0, "listen");
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  int client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "connect");
  int server = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  close(listener);
  int one = 1;
  setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  constexpr uint64_t kGet = 64;
  const uint64_t gets = pages / kGet * static_cast<uint64_t>(rounds);
  const uint64_t reply = wire::HEADER_SIZE_V24 + kGet * kPage + (checksums ? kGet * wire::kChecksumSize : 0);
  Bytes requests = hello(checkpoint->token[0], wire::kLinkVersion, wire::kFeatureBind | (checksums ? wire::kFeatureChecksum : 0));
  for (uint64_t g = 0; g < gets; g++) {
    const Bytes get = get24(pid, vaddr + (g % (pages / kGet)) * kGet * kPage, kGet);
    requests.insert(requests.end(), get.begin(), get.end());
  }
  const uint64_t expect = wire::kHelloReplySize + gets * reply;
  std::thread writer([&] {
    for (size_t off = 0; off < requests.size();) {
      ssize_t n = write(client, requests.data() + off, requests.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  });
  SessionLimits limits;
  limits.max_request_pages = 256;
  limits.max_queued_replies = 64;
  limits.max_queued_bytes = 16 << 20;
  LazySession session(server, *index, limits, &lookup);
  uint64_t got = 0;
  Bytes drop(1 << 20);
  const auto t0 = std::chrono::steady_clock::now();
  while (got < expect) {
    LazySession::Status st = session.on_readable();
    if (st == LazySession::Status::kOpen && session.wants_write()) st = session.on_writable();
    CHECK(st == LazySession::Status::kOpen, "measure session: %s", session.error().c_str());
    ssize_t n;
    while ((n = recv(client, drop.data(), drop.size(), MSG_DONTWAIT)) > 0) got += static_cast<uint64_t>(n);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  writer.join();
  close(client);
  return static_cast<double>(gets * kGet * kPage) / (1 << 20) / s;
}

void measure() {
  std::printf("measure: CRC32C of 4 KiB pages: %s %.2f GiB/s (%.3f s per GiB), table %.2f GiB/s\n",
              crc32c_hardware() ? "sse4.2" : "table", crc_gib_per_s(crc32c), 1 / crc_gib_per_s(crc32c),
              crc_gib_per_s(crc32c_portable));
  constexpr uint64_t kPages = 16384;  // 64 MiB
  auto memfd = staged_checkpoint(5, 100, kStagedVaddr, 0xaa, 0x5a);  // 4 pages: the memfd case below is its own
  {
    MemfdStoreOptions options;
    options.fill = MemfdStoreOptions::Fill::kRead;
    options.limits.max_bytes = kPages * kPage + (1 << 20);
    auto store = std::make_shared<MemfdStore>(options);
    CHECK(store->begin_entry(pid_key(100), kStagedVaddr, kPages, wire::PE_LAZY | wire::PE_PRESENT) == 0, "begin_entry");
    Bytes chunk(1 << 20);
    for (uint64_t at = 0; at < kPages * kPage; at += chunk.size()) {
      for (size_t i = 0; i < chunk.size(); i++) chunk[i] = pattern_byte(at + i);
      CHECK(store->receive_bytes(chunk.data(), chunk.size()) == static_cast<ssize_t>(chunk.size()), "receive");
    }
    CHECK(store->seal() == 0, "seal");
    memfd->store = store;
  }
  auto relayed = relay_checkpoint(300, kStagedVaddr, kPages, 0x7c);
  for (int rep = 0; rep < 3; rep++) {
    for (auto& [name, checkpoint, pid] : {std::tuple{"memfd", memfd, 100}, std::tuple{"relay (pipes)", relayed, 300}}) {
      const double plain = serve_mib_per_s(checkpoint, pid, kStagedVaddr, kPages, false, 4);
      const double summed = serve_mib_per_s(checkpoint, pid, kStagedVaddr, kPages, true, 4);
      std::printf("measure: serve 256 MiB from a %s store over loopback, GETs of 64 pages: %.0f MiB/s without "
                  "checksums, %.0f MiB/s with (%.0f%%)\n",
                  name, plain, summed, 100 * summed / plain);
    }
  }
}

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--measure") == 0) {
    measure();
    return 0;
  }
  test_crc32c();
  test_trailer_codec();
  test_server_checksums();
  test_client_refetch(false);
  test_client_refetch(true);
  test_relay_checksums();
  test_relay_checksums_socket_full();
  test_relay_void_mid_reply(false);
  test_relay_void_mid_reply(true);
  test_client();
  test_send_slices();
  test_gathered_replies();
  test_checksum_slices();
  test_codec();
  test_magic_apart_from_criu();
  test_recorded_sessions_never_hello();
  test_hello_binds();
  test_other_checkpoint_refused();
  test_unknown_token_refused();
  test_version_refused();
  test_require_token();
  test_stock_unchanged();
  std::printf("%d passed, 0 failed\n", g_passed);
  return 0;
}
