// TLS in the native core (docs/protocol.md §1.9), with certificates made by the openssl command line:
//   - TlsContext: a missing or unreadable file is one message naming the flag;
//   - the page server over TLS: a reply's header arrives as a record of its own, its pages in records that end
//     exactly where the payload ends (CRIU's receivers depend on it), pipelined replies never share a record;
//   - a client that connects and never starts its handshake does not hold up another client, and is dropped
//     after tls_handshake_timeout_ms; a revoked client certificate is refused; both count as TLS failures;
//   - a peer that is not a TLS client is named by what it sent: a plain page-server header, or other bytes (an
//     HTTP request) shown as text and hex;
//   - the fault engine's client side: its handshake runs from the engine's loop, so a page server that never
//     answers it does not stop the engine from reading the restore (RSTF arrives meanwhile) until the timeout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernel/uffd.h"
#include "lazy/fault_engine.h"
#include "lazy/restore_handshake.h"
#include "net/tls_context.h"
#include "net/tls_session.h"
#include "lazy/page_client.h"
#include "net/transport.h"
#include "server/lazy_session.h"
#include "server/page_index.h"
#include "server/page_server.h"
#include "staging/memfd_store.h"
#include "wire/link_ext.h"
#include "wire/wire.h"

#include "check.h"
#include "pki.h"

using namespace lazyd;

namespace {

constexpr uint64_t P = 4096;
constexpr uint64_t PID = 42;
constexpr uint64_t BASE = 0x7f0000000000;
constexpr uint64_t PAGES = 64;

// The test certificates (pki.h): a CA, good and revoked leaves for 127.0.0.1, a CRL revoking the second.
std::string& dir = test_pki::dir();

std::shared_ptr<TlsContext> context(const std::string& who, std::string* error = nullptr) {
  TlsOptions o;
  o.cacert = dir + "/ca.pem";
  o.cacrl = dir + "/crl.pem";
  o.cert = dir + "/" + who + ".pem";
  o.key = dir + "/" + who + "-key.pem";
  o.peer_name = "127.0.0.1";
  std::string ignored;
  return TlsContext::create(o, error ? error : &ignored);
}

void test_context_errors() {
  std::string error;
  TlsOptions o;
  o.cacert = dir + "/ca.pem";
  o.cert = dir + "/missing.pem";
  o.key = dir + "/good-key.pem";
  CHECK(TlsContext::create(o, &error) == nullptr);
  CHECK(error.find("missing.pem (--tls-cert): No such file or directory") != std::string::npos);

  o.cert = dir + "/good.pem";
  o.cacert = dir + "/nope.pem";
  CHECK(TlsContext::create(o, &error) == nullptr);
  CHECK(error.find("nope.pem (--tls-cacert)") != std::string::npos);

  o.cacert = dir + "/ca.pem";
  o.cacrl = dir + "/nope-crl.pem";
  CHECK(TlsContext::create(o, &error) == nullptr);
  CHECK(error.find("nope-crl.pem (--tls-cacrl)") != std::string::npos);

  o.cacrl = "";
  o.key = dir + "/revoked-key.pem";  // not good.pem's key
  CHECK(TlsContext::create(o, &error) == nullptr);
  CHECK(error.find("cannot use the certificate") != std::string::npos);

  o.key = dir + "/good-key.pem";
  auto ok = TlsContext::create(o, &error);
  CHECK(ok != nullptr);
  CHECK(ok->cacert_path() == dir + "/ca.pem");
}

int connect_tcp(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

void wait_fd(int fd, short events) {
  pollfd p{fd, events, 0};
  CHECK(poll(&p, 1, 5000) == 1);
}

// Client side of one TLS connection (the socket is blocking; gnutls records are read one at a time).
struct Client {
  int fd = -1;
  std::unique_ptr<TlsSession> tls;

  int handshake(uint16_t port, const std::string& who) {
    fd = connect_tcp(port);
    std::string error;
    tls = TlsSession::create(context(who), fd, TlsSession::Role::kClient, &error);
    CHECK(tls != nullptr);
    for (;;) {
      int rc = tls->handshake();
      if (rc != -EAGAIN) return rc;
      wait_fd(fd, tls->handshake_wants_write() ? POLLOUT : POLLIN);
    }
  }
  void send_all(const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (len) {
      ssize_t n = tls->send(p, len);
      if (n == -EAGAIN) {
        wait_fd(fd, POLLOUT);
        continue;
      }
      CHECK(n > 0);
      p += n;
      len -= static_cast<size_t>(n);
    }
  }
  // The next record's payload, whole (TlsSession::recv returns at most one record).
  std::vector<uint8_t> record() {
    std::vector<uint8_t> buf(20000);
    for (;;) {
      ssize_t n = tls->recv(buf.data(), buf.size());
      if (n == -EAGAIN) {
        wait_fd(fd, POLLIN);
        continue;
      }
      buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
      if (n < 0) buf.clear();
      return buf;
    }
  }
  ~Client() {
    tls.reset();
    if (fd >= 0) close(fd);
  }
};

struct Events {
  std::mutex mutex;
  std::vector<std::string> ended;
};

void test_server() {
  // The pages image: PAGES pages of a recognizable pattern.
  const std::string pages = dir + "/pages-1.img";
  std::vector<uint8_t> bytes(PAGES * P);
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(i * 7 + (i >> 12));
  FILE* f = std::fopen(pages.c_str(), "wb");
  CHECK(f && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size());
  std::fclose(f);
  auto index = std::make_shared<PageIndex>(P);
  CHECK(index->add_file(pages) == 0);
  PageRun run;
  run.vaddr = BASE;
  run.nr_pages = PAGES;
  run.flags = wire::PE_LAZY | wire::PE_PRESENT;
  run.file = 0;
  CHECK(index->add_task(PID, {run}) == 0);

  PageServerConfig config;  // every flag-backed limit set here: the core has no defaults for them
  config.session.max_request_pages = 65536;
  config.session.max_queued_replies = 64;
  config.session.max_queued_bytes = 64ull << 20;
  config.max_sessions = 16;
  config.stall_timeout_ms = 30000;
  config.idle_timeout_ms = 300000;
  config.tls = context("good");
  CHECK(config.tls != nullptr);
  // The good client below must be served within the staller's handshake timeout: long enough for a loaded machine.
  constexpr int kHandshakeTimeoutMs = 2000;
  config.tls_handshake_timeout_ms = kHandshakeTimeoutMs;
  config.session.format = wire::Format::V24;
  Events events;
  PageServer server(config, index, [&](const ServerEvent& e) {
    if (e.kind != ServerEvent::Kind::kSessionEnd) return;
    std::lock_guard<std::mutex> lock(events.mutex);
    events.ended.push_back((e.ok ? "ok: " : "failed: ") + e.message);
  });
  uint16_t port = 0;
  CHECK(server.listen("127.0.0.1", 0, &port) == 0);
  CHECK(server.start() == 0);

  // A client that connects and never says anything: it must not hold up the next one.
  const int staller = connect_tcp(port);
  const auto t0 = std::chrono::steady_clock::now();

  Client good;
  CHECK(good.handshake(port, "good") == 0);
  // Two pipelined GETs: all 64 pages, then one page.
  uint8_t get[2][wire::HEADER_SIZE_MAX] = {};
  wire::Header h;
  h.cmd = wire::PS_IOV_GET;
  h.nr_pages = PAGES;
  h.vaddr = BASE;
  h.dst_id = PID;
  CHECK(wire::encode(wire::Format::V24, h, get[0]));
  h.nr_pages = 1;
  h.vaddr = BASE + 5 * P;
  CHECK(wire::encode(wire::Format::V24, h, get[1]));
  good.send_all(get[0], wire::HEADER_SIZE_V24);
  good.send_all(get[1], wire::HEADER_SIZE_V24);
  for (int reply = 0; reply < 2; reply++) {
    // §1.9: the header is one record of exactly the header's size...
    std::vector<uint8_t> head = good.record();
    CHECK(head.size() == wire::HEADER_SIZE_V24);
    const wire::Header answer = wire::decode(wire::Format::V24, head.data());
    CHECK(answer.cmd == wire::GET_REPLY_CMD);
    const uint64_t want = (reply == 0 ? PAGES : 1) * P;
    CHECK(answer.nr_pages * P == want);
    // ... and the pages follow in records that end exactly at the payload's end.
    std::vector<uint8_t> payload;
    while (payload.size() < want) {
      std::vector<uint8_t> rec = good.record();
      CHECK(!rec.empty());
      CHECK(payload.size() + rec.size() <= want);
      payload.insert(payload.end(), rec.begin(), rec.end());
    }
    const size_t from = reply == 0 ? 0 : 5 * P;
    CHECK(std::memcmp(payload.data(), bytes.data() + from, want) == 0);
  }
  // Served while the staller still sits in its handshake.
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(kHandshakeTimeoutMs));
  CHECK(server.stats().tls_failures == 0);

  uint8_t close_cmd[wire::HEADER_SIZE_MAX] = {};
  wire::Header c;
  c.cmd = wire::PS_IOV_CLOSE;
  CHECK(wire::encode(wire::Format::V24, c, close_cmd));
  good.send_all(close_cmd, wire::HEADER_SIZE_V24);
  std::vector<uint8_t> status = good.record();
  CHECK(status.size() == 4 && status[0] == 0 && status[1] == 0 && status[2] == 0 && status[3] == 0);

  // The staller is dropped after the handshake timeout (waited for with a deadline only a failure reaches).
  const auto until = [&](uint64_t failures) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kHandshakeTimeoutMs) + std::chrono::seconds(20);
    while (server.stats().tls_failures < failures && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  };
  until(1);
  CHECK(server.stats().tls_failures == 1);
  char byte;
  CHECK(recv(staller, &byte, 1, 0) == 0);  // closed by the server
  close(staller);

  // A revoked certificate: refused during the handshake, with the reason on both ends.
  Client revoked;
  int rc = revoked.handshake(port, "revoked");
  if (rc == 0) {
    // TLS 1.3: the client's side of the handshake is done before the server has checked its certificate.
    revoked.send_all(close_cmd, wire::HEADER_SIZE_V24);
    CHECK(revoked.record().empty());
  }
  CHECK(revoked.tls->error().find("revoked") != std::string::npos);
  until(2);
  CHECK(server.stats().tls_failures == 2);

  // Not TLS at all, and the log says what the peer sent: an HTTP request (its first bytes as text and hex), and a
  // plain page-server client (its header named).
  const char http_request[] = "GET / HTTP/1.1\r\nHost: lazyd\r\n\r\n";
  for (const void* bytes : {static_cast<const void*>(http_request), static_cast<const void*>(close_cmd)}) {
    const size_t len = bytes == http_request ? sizeof http_request - 1 : wire::HEADER_SIZE_V24;
    const int plain = connect_tcp(port);
    CHECK(send(plain, bytes, len, MSG_NOSIGNAL) == static_cast<ssize_t>(len));
    char reply;
    CHECK(recv(plain, &reply, 1, 0) <= 0);  // refused without an answer
    close(plain);
  }
  until(4);
  CHECK(server.stats().tls_failures == 4);

  server.request_stop(0);
  server.join();
  std::lock_guard<std::mutex> lock(events.mutex);
  bool timeout_seen = false, revoked_seen = false, http_seen = false, plain_seen = false;
  int plain_protocol_lines = 0;
  for (const std::string& m : events.ended) {
    timeout_seen |= m.find("did not complete the handshake") != std::string::npos;
    revoked_seen |= m.find("certificate is revoked (CRL ") != std::string::npos;
    http_seen |= m.find("failed: TLS: the peer did not start a TLS handshake: its first 16 bytes are "
                        "\"GET / HTTP/1.1\\r\\n\" (47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a), neither a TLS "
                        "ClientHello nor a page-server header") != std::string::npos;
    plain_seen |= m.find("failed: TLS: the peer speaks the plain page-server protocol, not TLS (its first bytes are a "
                         "page-server CLOSE header, not a TLS ClientHello): run it with --tls") != std::string::npos;
    plain_protocol_lines += m.find("plain page-server protocol") != std::string::npos;
  }
  CHECK(timeout_seen);
  CHECK(revoked_seen);
  CHECK(http_seen);
  CHECK(plain_seen);
  CHECK(plain_protocol_lines == 1);  // the HTTP request is not called a page-server client
}

// The fault engine as a TLS client of a page server that accepts the connection and never answers the handshake:
// the restore's RSTF is still read (the handshake does not block the engine's thread), then the handshake times
// out with one line naming what to check, counted as a TLS failure.
void test_engine_handshake_does_not_block() {
  const int silent = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);  // listens; the kernel accepts, nobody reads
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(silent, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  CHECK(listen(silent, 4) == 0);
  socklen_t alen = sizeof a;
  CHECK(getsockname(silent, reinterpret_cast<sockaddr*>(&a), &alen) == 0);
  const uint16_t port = ntohs(a.sin_port);

  FaultEngineConfig cfg;
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;  // a task without lazy memory: nothing to fetch, only the hand-over and RSTF
  cfg.source = FaultEngineConfig::Source::kRemote;
  cfg.address = "127.0.0.1";
  cfg.port = port;
  cfg.format = wire::Format::V24;
  cfg.tls = context("good");
  cfg.connect_timeout_ms = 1500;
  std::mutex mutex;
  std::vector<EngineEvent> seen;
  FaultEngine engine(cfg, [&](const EngineEvent& e) {
    std::lock_guard<std::mutex> lock(mutex);
    seen.push_back(e);
  });
  CHECK(engine.start() == 0);
  const int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  const int uffd = uffd::open_fd(O_CLOEXEC | O_NONBLOCK);
  CHECK(uffd >= 0);
  CHECK(handshake::send_task(sock, 77, uffd) == 0);
  close(uffd);
  CHECK(handshake::send_finished(sock) == 0);
  // RSTF is read while the handshake waits (a blocking handshake would hold the thread until the timeout and
  // fail first); then the timeout ends the engine.
  auto first_of = [&](EngineEvent::Kind a, EngineEvent::Kind b) {
    std::lock_guard<std::mutex> lock(mutex);
    for (const EngineEvent& e : seen)
      if (e.kind == a || e.kind == b) return static_cast<int>(e.kind);
    return -1;
  };
  int first = -1;
  for (int i = 0; i < 500 && first < 0; i++) {
    first = first_of(EngineEvent::Kind::kRestoreFinished, EngineEvent::Kind::kFailed);
    if (first < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(first == static_cast<int>(EngineEvent::Kind::kRestoreFinished));
  for (int i = 0; i < 500 && engine.state() != EngineState::kFailed; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(engine.state() == EngineState::kFailed);
  engine.join();
  CHECK(engine.error() == "TLS handshake with the page server 127.0.0.1:" + std::to_string(port) +
                              " did not complete within 1500 ms: does it run with --tls?");
  CHECK(engine.stats().tls_failures == 1);
  CHECK(first_of(EngineEvent::Kind::kSourceConnected, EngineEvent::Kind::kSourceConnected) < 0);
  close(sock);
  close(silent);
}

// --tls-allow-name & co (net/access_policy.h): beyond the chain and CRL checks, the peer's certificate must name one
// of the names allowed for what its first command asks. The client certificate here names IP 127.0.0.1: a fetch
// is served where that name is allowed to fetch, and refused with one line naming the certificate's names where
// only another name is (the session ends; nothing is served).
void test_allowed_names() {
  const std::string pages = dir + "/pages-1.img";  // written by test_server()
  auto index = std::make_shared<PageIndex>(P);
  CHECK(index->add_file(pages) == 0);
  PageRun run;
  run.vaddr = BASE;
  run.nr_pages = PAGES;
  run.flags = wire::PE_LAZY | wire::PE_PRESENT;
  run.file = 0;
  CHECK(index->add_task(PID, {run}) == 0);
  for (const bool allowed : {true, false}) {
    PageServerConfig config;
    config.session.max_request_pages = 65536;
    config.session.max_queued_replies = 64;
    config.session.max_queued_bytes = 64ull << 20;
    config.max_sessions = 16;
    config.stall_timeout_ms = 30000;
    config.idle_timeout_ms = 300000;
    config.tls = context("good");
    config.tls_handshake_timeout_ms = 10000;
    config.session.format = wire::Format::V24;
    config.access.fetch_names = {allowed ? "127.0.0.1" : "restore.example"};
    config.access.upload_names = {"127.0.0.1"};  // an upload permission does not make a fetch one
    Events events;
    PageServer server(config, index, [&](const ServerEvent& e) {
      if (e.kind != ServerEvent::Kind::kSessionEnd) return;
      std::lock_guard<std::mutex> lock(events.mutex);
      events.ended.push_back((e.ok ? "ok: " : "failed: ") + e.message);
    });
    uint16_t port = 0;
    CHECK(server.listen("127.0.0.1", 0, &port) == 0);
    CHECK(server.start() == 0);
    Client client;
    CHECK(client.handshake(port, "good") == 0);
    uint8_t get[wire::HEADER_SIZE_MAX] = {};
    wire::Header h;
    h.cmd = wire::PS_IOV_GET;
    h.nr_pages = 1;
    h.vaddr = BASE;
    h.dst_id = PID;
    CHECK(wire::encode(wire::Format::V24, h, get));
    client.send_all(get, wire::HEADER_SIZE_V24);
    std::vector<uint8_t> head = client.record();
    if (allowed) {
      CHECK(head.size() == wire::HEADER_SIZE_V24);
      CHECK(wire::decode(wire::Format::V24, head.data()).cmd == wire::GET_REPLY_CMD);
      CHECK(server.stats().access_refused == 0);
    } else {
      CHECK(head.empty());  // refused: the session ends without a reply
      for (int i = 0; i < 500 && server.stats().access_refused == 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      CHECK(server.stats().access_refused == 1);
    }
    server.request_stop(0);
    server.join();
    if (!allowed) {
      std::lock_guard<std::mutex> lock(events.mutex);
      CHECK(events.ended.size() == 1);
      CHECK(events.ended[0] ==
            "failed: fetch refused: the peer's certificate (IP:127.0.0.1) names none of restore.example "
            "(--tls-allow-name or --tls-allow-fetch-name); session dropped");
    }
  }
}

}  // namespace

// Feature checksum (docs/protocol.md §7.4) under TLS: a LazySession over a TLS transport serving a staged
// checkpoint, and PageClient as the lazyd client: the trailer travels in records of its own after the pages, the
// client checks every page and hands the reply on.
struct OneStaged : StagedLookup {
  std::shared_ptr<StagedCheckpoint> c;
  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override { return pid == PID ? c : nullptr; }
  std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const override {
    return token == c->token ? c : nullptr;
  }
};

void test_checksums_over_tls() {
  MemfdStoreOptions options;
  options.fill = MemfdStoreOptions::Fill::kRead;
  auto store = std::make_shared<MemfdStore>(options);
  CHECK(store->begin_entry(pid_key(PID), BASE, PAGES, wire::PE_LAZY | wire::PE_PRESENT) == 0);
  std::vector<uint8_t> bytes(PAGES * P);
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(i * 13 + (i >> 12));
  CHECK(store->receive_bytes(bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  CHECK(store->seal() == 0);
  OneStaged staged;
  staged.c = std::make_shared<StagedCheckpoint>();
  staged.c->id = 3;
  staged.c->store = store;
  staged.c->token.fill(0x3c);
  staged.c->has_token = true;

  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  std::string error;
  auto server_tls = TlsSession::create(context("good"), sv[0], TlsSession::Role::kServer, &error);
  CHECK(server_tls != nullptr);
  PageClient client(wire::Format::V24, P);
  CHECK(client.adopt(sv[1]) == 0);
  CHECK(client.start_tls(context("good"), "127.0.0.1:0") == 0);
  int server_rc = -EAGAIN, client_rc = -EAGAIN;
  for (int rounds = 0; rounds < 100000 && (server_rc == -EAGAIN || client_rc == -EAGAIN); rounds++) {
    if (server_rc == -EAGAIN) server_rc = server_tls->handshake();
    if (client_rc == -EAGAIN) client_rc = client.tls_handshake();
  }
  CHECK(server_rc == 0 && client_rc == 0);

  PageIndex index(P);
  SessionLimits limits;
  limits.max_request_pages = 256;
  limits.max_queued_replies = 16;
  limits.max_queued_bytes = 16 << 20;
  LazySession session(std::make_unique<Transport>(sv[0], std::move(server_tls)), index, limits, &staged);
  wire::Hello hello;
  hello.features = wire::kFeatureBind | wire::kFeatureChecksum;
  hello.token.fill(0x3c);
  client.open_with_hello(hello);
  std::vector<uint8_t> buf(PAGES * P), small(P);
  PageRequest all;
  all.cookie = 1;
  all.pid = PID;
  all.img_vaddr = BASE;
  all.nr_pages = PAGES;
  all.buf = buf.data();
  PageRequest one = all;
  one.cookie = 2;
  one.img_vaddr = BASE + 7 * P;
  one.nr_pages = 1;
  one.buf = small.data();
  CHECK(client.submit(all) == 0 && client.submit(one) == 0);
  std::vector<PageReply> done;
  for (int rounds = 0; rounds < 100000 && done.size() < 2; rounds++) {
    LazySession::Status st = session.on_readable();
    if (st == LazySession::Status::kOpen && session.wants_write()) st = session.on_writable();
    CHECK(st == LazySession::Status::kOpen);
    CHECK(client.pump(&done) == 0);
  }
  CHECK(done.size() == 2 && client.checksums() && client.checksum_mismatches() == 0);
  CHECK(done[0].cookie == 1 && done[0].nr_pages == PAGES && buf == bytes);
  CHECK(done[1].cookie == 2 && std::memcmp(small.data(), bytes.data() + 7 * P, P) == 0);
  CHECK(session.stats().bytes_out == client.bytes_received());
}

int main() {
  test_pki::make();
  test_checksums_over_tls();
  test_context_errors();
  test_server();
  test_allowed_names();
  test_engine_handshake_does_not_block();
  test_pki::remove();
  return check_report();
}
