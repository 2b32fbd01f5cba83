// Relay staging (staging/relay.h, server/page_server.h) against a dump-side peer in the test: a loopback server
// speaking the server side of the lazy-fetch session (docs/protocol.md §1.6) in both header layouts, clamping
// each reply at the end of an 8-page (measurements: 256-page) "page-pipe buffer" like CRIU, answering only as fast as the test lets it.
// Restores are PageClients of the page server. Cases: a complete pull then CLOSE (and a FIN only after the
// answer), GETs served while pulling, a demand fetched ahead of the bulk, the peer dying or stalling mid-pull
// (lazyd's end is a reset, never an EOF), a GET for a never-pulled page refused, the memory cap and a pid already
// staged refused before any GET (reset), a release while pulling (reset); the lazyd link of a relayed checkpoint
// (its token drawn at the start of the pull; HELLO granted and bound to it; every reply's trailer the CRC32C of
// the pages the dump sent, a demand fetched ahead of the bulk included; a never-pulled page refused to a bound
// session); and the demand latency measured.
#include "staging/relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "net/tls_session.h"
#include "server/page_index.h"
#include "server/page_server.h"
#include "util/clock.h"
#include "util/crc32c.h"
#include "wire/link_ext.h"
#include "wire/wire.h"

#include "check.h"
#include "pki.h"

using namespace lazyd;

namespace {

const uint64_t P = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
// Every 8-byte word of a page names its pid, its page and its place.
uint64_t pattern(uint64_t pid, uint64_t page_addr, size_t word) { return (pid << 48) ^ page_addr ^ (word * 0x9e3779b9ull); }

void fill_page(uint8_t* page, uint64_t pid, uint64_t addr) {
  for (size_t w = 0; w < P / 8; w++) {
    const uint64_t v = pattern(pid, addr, w);
    std::memcpy(page + w * 8, &v, 8);
  }
}

bool page_ok(const uint8_t* page, uint64_t pid, uint64_t addr) {
  for (size_t w = 0; w < P / 8; w++) {
    uint64_t v;
    std::memcpy(&v, page + w * 8, 8);
    if (v != pattern(pid, addr, w)) return false;
  }
  return true;
}

// Waits (without sleeping as synchronisation: a condition checked every millisecond) until cond() or timeout.
template <typename F>
bool eventually(F cond, int timeout_ms = 10000) {
  const uint64_t deadline = now_ns() + ms_to_ns(timeout_ms);
  while (!cond()) {
    if (now_ns() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// The dump's lazy page server: one client, GETs answered in order, each clamped at the next RUN boundary.
struct Dump {
  enum class End { kNone, kCloseThenEof, kReset, kEof, kCut };
  wire::Format format;
  uint64_t run;  // replies are clamped at multiples of this many pages, as CRIU clamps at its iovec end
  std::shared_ptr<const TlsContext> tls_context;  // --tls: the dump's own credentials
  std::unique_ptr<TlsSession> tls;
  std::atomic<bool> tls_refused{false};
  int fd = -1;
  int listen_fd = -1;
  uint16_t port = 0;
  std::thread thread;
  std::atomic<int64_t> credits{-1};   // replies it may send (-1: any number)
  std::atomic<int> die_after{-1};     // after this many replies: half a reply, then shutdown(SHUT_WR)
  std::atomic<bool> hold_close{false};  // CLOSE: no answer (the socket stays open) while this is set
  std::atomic<int> gets{0};
  std::atomic<int> replies{0};
  std::atomic<int> end{static_cast<int>(End::kNone)};  // how the client's end arrived
  std::mutex mutex;
  std::vector<uint64_t> get_vaddrs;  // in arrival order

  explicit Dump(wire::Format f, uint64_t run_pages = 8, std::shared_ptr<const TlsContext> tls_ctx = nullptr)
      : format(f), run(run_pages), tls_context(std::move(tls_ctx)) {
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(listen_fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    CHECK(listen(listen_fd, 1) == 0);
    socklen_t len = sizeof a;
    getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this] { serve(); });
  }
  ~Dump() {
    credits = -1;
    hold_close = false;
    if (thread.joinable()) thread.join();
    close(listen_fd);
  }
  End ended() const { return static_cast<End>(end.load()); }
  std::vector<uint64_t> log() {
    std::lock_guard<std::mutex> lock(mutex);
    return get_vaddrs;
  }

  // Plain or TLS (then each call's bytes go in records of their own, like CRIU's header and pages).
  bool send_all(const uint8_t* p, size_t len) {
    while (len > 0) {
      ssize_t n = tls ? tls->send(p, len) : send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n == -EAGAIN || (n < 0 && !tls && errno == EAGAIN)) {
        pollfd w{fd, POLLOUT, 0};
        poll(&w, 1, 100);
        continue;
      }
      if (n <= 0) return false;
      p += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }
  // Bytes, 0 at EOF, -EAGAIN, or -errno.
  ssize_t recv_some(uint8_t* buf, size_t len) {
    if (tls) return tls->recv(buf, len);
    ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
    return n >= 0 ? n : -errno;
  }
  // After our end of the session: how the client's end arrives (EOF, or a reset). Under TLS its close_notify
  // comes first.
  void watch_end(End on_eof) {
    if (tls) tls->bye();
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, 100);
      uint8_t sink[512];
      ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
      if (n > 0 || (n < 0 && errno == EAGAIN)) continue;
      end = static_cast<int>(n == 0 ? on_eof : End::kReset);
      return;
    }
  }

  void serve() {
    fd = accept(listen_fd, nullptr, nullptr);
    if (fd < 0) return;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (tls_context) {
      std::string error;
      tls = TlsSession::create(tls_context, fd, TlsSession::Role::kServer, &error);
      CHECK(tls != nullptr);
      for (;;) {
        const int rc = tls->handshake();
        if (rc == 0) break;
        if (rc != -EAGAIN) {
          tls_refused = true;
          watch_end(End::kEof);
          tls.reset();
          close(fd);
          return;
        }
        pollfd p{fd, static_cast<short>(tls->handshake_wants_write() ? POLLOUT : POLLIN), 0};
        poll(&p, 1, 100);
      }
    }
    const size_t hs = wire::header_size(format);
    std::deque<wire::Header> queue;
    std::vector<uint8_t> in;
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      poll(&p, 1, queue.empty() || credits == 0 ? 5 : 0);
      uint8_t buf[4096];
      ssize_t n = recv_some(buf, sizeof buf);
      if (n == 0) {
        end = static_cast<int>(End::kEof);
        break;
      }
      if (n < 0 && n != -EAGAIN) {
        end = static_cast<int>(End::kReset);
        break;
      }
      if (n > 0) in.insert(in.end(), buf, buf + n);
      bool closed = false;
      while (in.size() >= hs) {
        wire::Header h = wire::decode(format, in.data());
        in.erase(in.begin(), in.begin() + static_cast<ptrdiff_t>(hs));
        if (h.command() == wire::PS_IOV_CLOSE) {
          closed = true;
          break;
        }
        CHECK(h.command() == wire::PS_IOV_GET);
        gets++;
        {
          std::lock_guard<std::mutex> lock(mutex);
          get_vaddrs.push_back(h.vaddr);
        }
        queue.push_back(h);
      }
      while (!queue.empty() && credits != 0) {
        const wire::Header h = queue.front();
        queue.pop_front();
        if (credits > 0) credits--;
        wire::Header r;
        r.cmd = wire::GET_REPLY_CMD;
        r.pad = h.pad;
        r.nr_pages = std::min<uint64_t>(h.nr_pages, run - (h.vaddr / P) % run);
        r.vaddr = h.vaddr;
        r.dst_id = h.dst_id;
        std::vector<uint8_t> out(hs + r.nr_pages * P);
        wire::encode(format, r, out.data());
        for (uint64_t pg = 0; pg < r.nr_pages; pg++) fill_page(out.data() + hs + pg * P, h.dst_id, h.vaddr + pg * P);
        if (die_after >= 0 && replies == die_after) {
          send_all(out.data(), hs);
          send_all(out.data() + hs, P / 2);  // half a reply, then our side is gone
          shutdown(fd, SHUT_WR);
          watch_end(End::kEof);
          tls.reset();
          close(fd);
          return;
        }
        if (!send_all(out.data(), hs) || !send_all(out.data() + hs, out.size() - hs)) break;
        replies++;
      }
      if (closed && hold_close) {
        watch_end(End::kCloseThenEof);  // how our client ends while it waits for the answer
        while (hold_close) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        break;
      }
      if (closed) {
        int32_t status = 0;
        send_all(reinterpret_cast<uint8_t*>(&status), sizeof status);
        watch_end(End::kCloseThenEof);  // CRIU waits for the client's EOF after answering (§1.6)
        break;
      }
    }
    tls.reset();
    close(fd);
  }
};

// The page server with staging on, and its events.
struct Server {
  std::unique_ptr<PageServer> server;
  uint16_t port = 0;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<ServerEvent> events;

  explicit Server(uint64_t staging_max_bytes, uint64_t staging_restores = 0) {
    PageServerConfig c;
    c.session.format = wire::Format::Unknown;
    c.session.max_request_pages = 1024;
    c.session.max_queued_replies = 64;
    c.session.max_queued_bytes = 16 << 20;
    c.max_sessions = 64;
    c.stall_timeout_ms = 5000;
    c.idle_timeout_ms = 0;
    c.accept_uploads = true;
    c.staging_max_bytes = staging_max_bytes;
    c.staging_restores = staging_restores;
    c.upload.format = wire::Format::Unknown;
    c.upload.max_entry_pages = 1 << 18;
    c.tls_handshake_timeout_ms = 5000;
    server = std::make_unique<PageServer>(c, std::make_shared<PageIndex>(P), [this](const ServerEvent& e) {
      std::lock_guard<std::mutex> lock(mutex);
      events.push_back(e);
      events.back().store = nullptr;  // a kept event must not keep a store (and its memory) alive
      cv.notify_all();
    });
    CHECK(server->listen("127.0.0.1", 0, &port) == 0);
    CHECK(server->start() == 0);
  }
  ~Server() {
    server->request_stop(0);
    server->join();
  }
  // The first event of this kind for checkpoint (waits up to 10 s).
  bool wait_event(ServerEvent::Kind kind, uint64_t checkpoint, ServerEvent* out) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, std::chrono::seconds(10), [&] {
      for (const ServerEvent& e : events) {
        if (e.kind == kind && e.checkpoint == checkpoint) {
          if (out) *out = e;
          return true;
        }
      }
      return false;
    });
  }
  bool has_event(ServerEvent::Kind kind, uint64_t checkpoint) {
    std::lock_guard<std::mutex> lock(mutex);
    for (const ServerEvent& e : events) {
      if (e.kind == kind && e.checkpoint == checkpoint) return true;
    }
    return false;
  }
};

RelayOptions options_for(const Dump& dump, std::vector<RelayTask> tasks, const Server& server) {
  RelayOptions o;
  o.host = "127.0.0.1";
  o.port = dump.port;
  o.connect_timeout_ms = 2000;
  o.format = dump.format;
  o.tasks = std::move(tasks);
  o.request_pages = 64;
  o.inflight_bytes = 4 * 64 * P;
  o.stall_timeout_ms = 5000;
  o.page_size = P;
  o.budget = server.server->staging().budget();
  return o;
}

// Two tasks: ranges not multiples of RUN, not aligned to it, one of 1 page.
std::vector<RelayTask> two_tasks(uint64_t scale = 1) {
  const uint64_t base = 0x7f0000000000ull;
  return {RelayTask{101, {{base, 37 * scale}, {base + 0x100000 * scale, 5}, {base + 0x400000 * scale, 1}}},
          RelayTask{202, {{base + 0x3000, 70 * scale}, {base + 0x800000 * scale, 12}}}};
}

uint64_t start_relay(Server& server, RelayOptions options, std::string* error = nullptr, std::string* token = nullptr) {
  std::string why;
  int err = 0;
  std::unique_ptr<Relay> relay = Relay::start(std::move(options), &why, &err);
  if (!relay) {
    if (error) *error = why;
    return 0;
  }
  const uint64_t id = server.server->start_relay(std::move(relay), &why, token);
  if (error) *error = why;
  return id;
}

// A restore: one GET at a time through a PageClient to the page server. Returns 0 and the pages in *pages, or
// the client's error.
struct Restore {
  PageClient client;
  explicit Restore(const Server& server, wire::Format format) : client(format, P) {
    CHECK(client.connect("127.0.0.1", server.port, 2000) == 0);
  }
  int get(uint64_t pid, uint64_t vaddr, uint64_t nr, std::vector<uint8_t>* out, uint64_t* got, int timeout_ms = 10000) {
    out->assign(nr * P, 0);
    PageRequest r{1, pid, vaddr, nr, out->data()};
    int rc = client.submit(r);
    if (rc < 0) return rc;
    const uint64_t deadline = now_ns() + ms_to_ns(timeout_ms);
    std::vector<PageReply> done;
    while (done.empty()) {
      pollfd p{client.fd(), static_cast<short>(POLLIN | (client.wants_write() ? POLLOUT : 0)), 0};
      poll(&p, 1, 10);
      rc = client.pump(&done);
      if (rc < 0) return rc;
      if (now_ns() > deadline) return -ETIMEDOUT;
    }
    *got = done[0].nr_pages;
    return 0;
  }
  // Every page of every task, each GET as large as the server answers.
  bool verify_all(const std::vector<RelayTask>& tasks) {
    for (const RelayTask& t : tasks) {
      for (const RelayRange& range : t.ranges) {
        uint64_t at = 0;
        while (at < range.nr_pages) {
          std::vector<uint8_t> buf;
          uint64_t got = 0;
          if (get(t.pid, range.vaddr + at * P, range.nr_pages - at, &buf, &got) != 0) return false;
          for (uint64_t pg = 0; pg < got; pg++) {
            if (!page_ok(buf.data() + pg * P, t.pid, range.vaddr + (at + pg) * P)) return false;
          }
          at += got;
        }
      }
    }
    return true;
  }
};

uint64_t total_pages(const std::vector<RelayTask>& tasks) {
  uint64_t n = 0;
  for (const RelayTask& t : tasks)
    for (const RelayRange& r : t.ranges) n += r.nr_pages;
  return n;
}

// A complete pull: every page held, CLOSE sent only then, the dump sees its EOF only after answering; restores
// are served every page, right: whole ranges twice (fan-out: serving from the pipes does not consume them) and
// each page alone (from the middle of its pipe, and pages that straddle two). By reference (the default over
// plain TCP) no byte is copied; without it every byte goes into the memfd.
void test_complete_pull(wire::Format format, bool by_reference) {
  Server server(1ull << 30);
  Dump dump(format);
  const std::vector<RelayTask> tasks = two_tasks(by_reference ? 8 : 1);
  RelayOptions o = options_for(dump, tasks, server);
  o.hold_by_reference = by_reference;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  ServerEvent staged;
  CHECK(server.wait_event(ServerEvent::Kind::kStaged, id, &staged));  // served from the start of the pull
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.ok);
  CHECK(done.bulk_requests > 0 && done.short_replies > 0 && done.demand_requests == 0);
  CHECK(done.pages_held == total_pages(tasks));
  CHECK(done.pages_total == total_pages(tasks));
  CHECK(done.bytes == total_pages(tasks) * P);
  CHECK(done.bytes_copied == (by_reference ? 0 : done.bytes));
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kCloseThenEof);
  // Each page asked for exactly once (short replies re-ask only the rest), so the dump's replies cover the layout.
  CHECK(dump.replies >= dump.gets);
  Restore restore(server, format);
  CHECK(restore.verify_all(tasks));
  Restore again(server, format);
  CHECK(again.verify_all(tasks));
  const RelayRange& range = tasks[1].ranges[0];
  for (uint64_t pg = 0; pg < range.nr_pages; pg++) {
    std::vector<uint8_t> buf;
    uint64_t got = 0;
    CHECK(again.get(tasks[1].pid, range.vaddr + pg * P, 1, &buf, &got) == 0);
    CHECK(got == 1 && page_ok(buf.data(), tasks[1].pid, range.vaddr + pg * P));
  }
  CHECK(!server.has_event(ServerEvent::Kind::kRelayFailed, id));
}

// A restore's GET for a page the bulk has not reached is fetched ahead of it: the dump, holding its replies, sees
// the demand GET right behind the bulk GETs in flight, not after the bulk has got there.
void test_demand_ahead_of_bulk(wire::Format format) {
  Server server(1ull << 30);
  Dump dump(format);
  dump.credits = 0;
  const std::vector<RelayTask> tasks = two_tasks(8);
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = 16;
  o.inflight_bytes = 2 * 16 * P;  // two bulk GETs in flight
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.gets == 2; }));
  const RelayRange last = tasks[1].ranges[1];
  const uint64_t want = last.vaddr + 5 * P;
  std::vector<uint8_t> buf;
  uint64_t got = 0;
  int rc = -1;
  std::thread restore_thread([&] {
    Restore restore(server, format);
    rc = restore.get(tasks[1].pid, want, 2, &buf, &got);
  });
  CHECK(eventually([&] { return dump.gets == 3; }));
  CHECK(dump.log()[2] == want);  // the demand, third: behind the two bulk GETs only
  dump.credits = -1;
  restore_thread.join();
  CHECK(rc == 0);
  CHECK(got >= 1 && got <= 2);
  for (uint64_t pg = 0; pg < got; pg++) CHECK(page_ok(buf.data() + pg * P, tasks[1].pid, want + pg * P));
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.demand_requests == 1);
  CHECK(eventually([&] { return dump.ended() == Dump::End::kCloseThenEof; }));
  Restore after(server, format);
  CHECK(after.verify_all(tasks));
}

// The dump's server dies mid-pull (half a reply, then its EOF): the relay fails with one line, lazyd's end is a
// reset (the dump would count an EOF as success and kill the tasks), a page never pulled is refused (never zeros),
// and a restore waiting for one is refused too. Pages held by reference (pipes: the default over plain TCP) are
// dropped, because the resumed tasks may change them: nothing of the checkpoint is served. Pages copied into the
// memfd (hold_by_reference off, as under TLS) are a snapshot and still served.
void test_peer_dies(wire::Format format, bool by_reference) {
  Server server(1ull << 30);
  Dump dump(format);
  dump.credits = 3;
  const std::vector<RelayTask> tasks = two_tasks(8);
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = 16;
  o.inflight_bytes = 2 * 16 * P;
  o.hold_by_reference = by_reference;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.replies == 3; }));
  // A restore waits for a page far ahead of the bulk.
  const RelayRange last = tasks[1].ranges[1];
  std::vector<uint8_t> buf;
  uint64_t got = 0;
  int waiting_rc = 0;
  std::thread waiter([&] {
    Restore restore(server, format);
    waiting_rc = restore.get(tasks[1].pid, last.vaddr, 1, &buf, &got);
  });
  CHECK(eventually([&] { return dump.gets >= 4; }));  // its demand reached the dump
  dump.die_after = 3;
  dump.credits = -1;
  ServerEvent failed;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
  CHECK(!failed.ok);
  CHECK(failed.message.find("closed the connection") != std::string::npos);
  CHECK(failed.message.find("resumes the tasks") != std::string::npos);
  CHECK(failed.message.find('\n') == std::string::npos);
  CHECK(failed.pages_held < failed.pages_total);
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kReset);
  waiter.join();
  CHECK(waiting_rc < 0);  // the session was refused: no reply, no zeros
  // Pages held (the first replies, from the start of task 101's first range).
  Restore restore(server, format);
  std::vector<uint8_t> first;
  if (by_reference) {
    CHECK(restore.get(tasks[0].pid, tasks[0].ranges[0].vaddr, 1, &first, &got) < 0);
  } else {
    CHECK(restore.get(tasks[0].pid, tasks[0].ranges[0].vaddr, 1, &first, &got) == 0);
    CHECK(got == 1 && page_ok(first.data(), tasks[0].pid, tasks[0].ranges[0].vaddr));
  }
  Restore refused(server, format);
  CHECK(refused.get(tasks[1].pid, last.vaddr + 3 * P, 1, &first, &got) < 0);
  CHECK(refused.client.error().find("closed the connection") != std::string::npos);
}

// Pipes run out mid-pull (the store's limit of pipes, as with no fd left past RLIMIT_NOFILE or, under the packaged
// unit without CAP_SYS_RESOURCE, F_SETPIPE_SZ refused): the rest of the pages are copied into the memfd, and
// restores get every page right, from both.
void test_pipes_run_out() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  const std::vector<RelayTask> tasks = two_tasks(14);  // ~6 MiB: ~6 pipes of 1 MiB; no range over 1024 pages
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = 256;
  o.inflight_bytes = 256 * P;
  o.max_pipes = 2;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.pages_held == total_pages(tasks));
  CHECK(done.bytes_copied > 0 && done.bytes_copied < done.bytes);  // some by reference, the rest copied
  CHECK(done.bytes - done.bytes_copied <= 2 * (1 << 20));            // two pipes of 1 MiB at most
  Restore restore(server, wire::Format::V32);
  CHECK(restore.verify_all(tasks));
}

// The dump stops answering: past the stall timeout the relay fails and resets the connection.
void test_peer_stalls() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  dump.credits = 2;
  RelayOptions o = options_for(dump, two_tasks(8), server);
  o.stall_timeout_ms = 300;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  ServerEvent failed;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
  CHECK(failed.message.find("(--relay-stall-timeout)") != std::string::npos);
  dump.credits = -1;  // too late: the connection is gone
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kReset);
}

// The memory cap: refused before any GET, the connection reset.
void test_cap_exceeded() {
  Server server(64 * P);
  Dump dump(wire::Format::V24);
  std::string error;
  CHECK(start_relay(server, options_for(dump, two_tasks(), server), &error) == 0);
  CHECK(error.find("--staging-max-bytes") != std::string::npos);
  CHECK(error.find("resumes the tasks") != std::string::npos);
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kReset);
  CHECK(dump.gets == 0);
  CHECK(server.server->stats().staging_bytes == 0);
}

// A pid already staged (by a relay in progress): the second relay is refused, its dump reset with no GET.
void test_pid_already_staged() {
  Server server(1ull << 30);
  Dump first(wire::Format::V32);
  first.credits = 0;
  const uint64_t id = start_relay(server, options_for(first, two_tasks(), server));
  CHECK(id >= 2);
  Dump second(wire::Format::V32);
  std::string error;
  CHECK(start_relay(server, options_for(second, {RelayTask{202, {{0x500000000000ull, 4}}}}, server), &error) == 0);
  CHECK(error.find("pid 202 is already staged by checkpoint #" + std::to_string(id)) != std::string::npos);
  CHECK(eventually([&] { return second.ended() != Dump::End::kNone; }));
  CHECK(second.ended() == Dump::End::kReset);
  CHECK(second.gets == 0);
  first.credits = -1;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, nullptr));
}

// `lazyd staging release` while the pull runs: the dump is reset (it resumes the tasks), not closed.
void test_release_while_pulling() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V24);
  dump.credits = 1;
  const uint64_t id = start_relay(server, options_for(dump, two_tasks(), server));
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.replies == 1; }));
  server.server->release(id, "released by the operator");
  ServerEvent failed;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
  CHECK(failed.message.find("released while pulling") != std::string::npos);
  CHECK(server.wait_event(ServerEvent::Kind::kReleased, id, nullptr));
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kReset);
  CHECK(eventually([&] { return server.server->stats().staging_bytes == 0; }));
}

// A relay-progress event that reports every page held (a hold_close relay sends it at once).
bool held_reported(Server& server, uint64_t id, uint64_t total) {
  std::lock_guard<std::mutex> lock(server.mutex);
  for (const ServerEvent& e : server.events) {
    if (e.kind == ServerEvent::Kind::kRelayProgress && e.checkpoint == id && e.pages_held == total) return true;
  }
  return false;
}

// hold_close (lazyd migrate): every page pulled, the last one reported at once, and the dump has no CLOSE and no
// EOF while restores are served; release() then sends CLOSE (answered, then our FIN).
void test_hold_close_release(wire::Format format) {
  Server server(1ull << 30);
  Dump dump(format);
  const std::vector<RelayTask> tasks = two_tasks();
  RelayOptions o = options_for(dump, tasks, server);
  o.hold_close = true;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return held_reported(server, id, total_pages(tasks)); }));
  Restore restore(server, format);
  CHECK(restore.verify_all(tasks));  // served from the store while the CLOSE is held
  CHECK(dump.ended() == Dump::End::kNone);
  CHECK(!server.has_event(ServerEvent::Kind::kRelayDone, id) && !server.has_event(ServerEvent::Kind::kRelayFailed, id));
  server.server->release_relay(id);
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.ok && done.pages_held == total_pages(tasks));
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kCloseThenEof);
}

// hold_close, released before the pull ends: the CLOSE goes as soon as the last page is in.
void test_hold_close_released_early() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  dump.credits = 1;
  const std::vector<RelayTask> tasks = two_tasks();
  RelayOptions o = options_for(dump, tasks, server);
  o.hold_close = true;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.replies == 1; }));
  server.server->release_relay(id);
  dump.credits = -1;
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.ok && done.pages_held == total_pages(tasks));
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kCloseThenEof);
}

// hold_close, then a failure before the point of no return (release of the checkpoint = abort): every page was
// held, yet the dump is reset, never closed, so it resumes the tasks.
void test_hold_close_abort() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V24);
  const std::vector<RelayTask> tasks = two_tasks();
  RelayOptions o = options_for(dump, tasks, server);
  o.hold_close = true;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return held_reported(server, id, total_pages(tasks)); }));
  CHECK(dump.ended() == Dump::End::kNone);
  server.server->release(id, "the destination's restore failed");
  ServerEvent failed;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
  CHECK(failed.message.find("reset") != std::string::npos);
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kReset);
}

// A dump that never answers CLOSE: the page server's thread does not wait for it (restores are served meanwhile),
// our FIN follows the CLOSE (every page is held), and past the stall timeout the relay ends as failed without
// claiming a reset (the dump had our CLOSE: its exit status tells what became of the tasks).
void test_close_unanswered() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  dump.hold_close = true;
  const std::vector<RelayTask> tasks = two_tasks();
  RelayOptions o = options_for(dump, tasks, server);
  o.stall_timeout_ms = 1500;
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kCloseThenEof);
  CHECK(!server.has_event(ServerEvent::Kind::kRelayDone, id) && !server.has_event(ServerEvent::Kind::kRelayFailed, id));
  Restore restore(server, wire::Format::V32);
  CHECK(restore.verify_all(tasks));  // served while the relay waits for the answer: the thread does not block
  CHECK(!server.has_event(ServerEvent::Kind::kRelayFailed, id));
  ServerEvent failed;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
  CHECK(failed.message.find("did not answer CLOSE") != std::string::npos);
  CHECK(failed.message.find("exit status") != std::string::npos);
  CHECK(failed.message.find("reset") == std::string::npos);
  CHECK(failed.pages_held == failed.pages_total);
  dump.hold_close = false;
}

// --staging-restores reached while the pull runs (a restore completed: CLOSE, clean hang-up): the checkpoint is
// released for new sessions, but the relay goes on to its CLOSE — a reset now would resume the original while its
// restored copy runs on.
void test_restores_retire_while_pulling() {
  Server server(1ull << 30, 1);
  Dump dump(wire::Format::V24);
  dump.credits = 2;
  const std::vector<RelayTask> tasks = two_tasks(8);
  const uint64_t id = start_relay(server, options_for(dump, tasks, server));
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.replies == 2; }));
  {
    Restore restore(server, wire::Format::V24);
    std::vector<uint8_t> buf;
    uint64_t got = 0;
    CHECK(restore.get(tasks[0].pid, tasks[0].ranges[0].vaddr, 1, &buf, &got) == 0);
    int32_t status = -1;
    CHECK(restore.client.close(2000, &status) == 0);
  }
  CHECK(server.wait_event(ServerEvent::Kind::kRestoreDone, id, nullptr));
  CHECK(server.wait_event(ServerEvent::Kind::kReleased, id, nullptr));
  CHECK(!server.has_event(ServerEvent::Kind::kRelayFailed, id));
  dump.credits = -1;
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.pages_held == total_pages(tasks));
  CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
  CHECK(dump.ended() == Dump::End::kCloseThenEof);
  CHECK(eventually([&] { return server.server->stats().staging_bytes == 0; }));  // retired, its last user gone
}

// A restore that sends its GET and half-closes (as a one-shot client does) while the page is not pulled yet: the
// page server does not spin on the hang-up meanwhile, and the reply comes once the page is in, then the end.
void test_half_closed_waiter() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  dump.credits = 0;
  const std::vector<RelayTask> tasks = two_tasks(8);
  const uint64_t id = start_relay(server, options_for(dump, tasks, server));
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.gets >= 1; }));
  const uint64_t pid = tasks[1].pid;
  const uint64_t want = tasks[1].ranges[1].vaddr + 3 * P;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(server.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  wire::Header get;
  get.cmd = wire::PS_IOV_GET;
  get.nr_pages = 1;
  get.vaddr = want;
  get.dst_id = pid;
  uint8_t head[wire::HEADER_SIZE_V32] = {};
  wire::encode(wire::Format::V32, get, head);
  CHECK(send(fd, head, sizeof head, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof head));
  CHECK(shutdown(fd, SHUT_WR) == 0);
  CHECK(eventually([&] { std::vector<uint64_t> log = dump.log(); return !log.empty() && log.back() == want; }));
  // A measurement window, not a synchronisation: a thread woken in a loop by the hang-up would burn it whole.
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  getrusage(RUSAGE_SELF, &after);
  auto ms = [](const rusage& r) {
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000.0 + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1000.0;
  };
  CHECK(ms(after) - ms(before) < 150);
  dump.credits = -1;
  std::vector<uint8_t> reply(sizeof head + P);
  size_t got = 0;
  while (got < reply.size()) {
    ssize_t n = recv(fd, reply.data() + got, reply.size() - got, 0);
    CHECK(n > 0);
    got += static_cast<size_t>(n);
  }
  const wire::Header r = wire::decode(wire::Format::V32, reply.data());
  CHECK(r.cmd == wire::GET_REPLY_CMD && r.vaddr == want && r.dst_id == pid && r.nr_pages == 1);
  CHECK(page_ok(reply.data() + sizeof head, pid, want));
  uint8_t c;
  CHECK(recv(fd, &c, 1, 0) == 0);  // then the session ends: the client had hung up
  close(fd);
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, nullptr));
}

// A dump with no lazy page: nothing to pull, CLOSE at once.
void test_nothing_to_pull() {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  const uint64_t id = start_relay(server, options_for(dump, {RelayTask{303, {}}}, server));
  CHECK(id >= 2);
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.pages_total == 0);
  CHECK(eventually([&] { return dump.ended() == Dump::End::kCloseThenEof; }));
}

// --tls: the relay talks TLS to a dump that runs with --tls (its own client credentials, the dump's checked), and
// a dump that refuses its certificate fails the relay with the TLS reason; nothing is pulled then.
void test_tls() {
  Server server(1ull << 30);
  {
    Dump dump(wire::Format::V32, 8, test_pki::context("good"));
    const std::vector<RelayTask> tasks = two_tasks();
    RelayOptions o = options_for(dump, tasks, server);
    o.tls = test_pki::context("good");
    const uint64_t id = start_relay(server, o);
    CHECK(id >= 2);
    ServerEvent done;
    CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
    CHECK(done.pages_held == total_pages(tasks));
    CHECK(done.bytes_copied == done.bytes);  // TLS decrypts in user space: every page copied into the memfd
    CHECK(eventually([&] { return dump.ended() != Dump::End::kNone; }));
    CHECK(dump.ended() == Dump::End::kCloseThenEof);
    Restore restore(server, wire::Format::V32);
    CHECK(restore.verify_all(tasks));
    server.server->release(id, "next case");
    CHECK(server.wait_event(ServerEvent::Kind::kReleased, id, nullptr));
  }
  {
    Dump dump(wire::Format::V24, 8, test_pki::context("good"));
    RelayOptions o = options_for(dump, two_tasks(), server);
    o.tls = test_pki::context("revoked");
    const uint64_t id = start_relay(server, o);
    CHECK(id >= 2);
    ServerEvent failed;
    CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, &failed));
    CHECK(failed.message.find("TLS") != std::string::npos);
    CHECK(failed.pages_held == 0);
    CHECK(eventually([&] { return dump.tls_refused.load(); }));  // the dump's side of the handshake may end later
    CHECK(dump.gets == 0);
  }
}

// Measurement (printed, not asserted beyond correctness): how long a restore's GET for a page the bulk has not
// reached waits while a large pull runs on loopback, with the default request size and bytes in flight.
void measure_demand_latency(uint64_t request_pages, uint64_t inflight_bytes) {
  Server server(1ull << 32);
  Dump dump(wire::Format::V32, 256);  // 1 MiB page-pipe buffers (pipe-max-size)
  const uint64_t pages = (256ull << 20) / P;
  const std::vector<RelayTask> tasks = {RelayTask{404, {{0x7e0000000000ull, pages}}}};
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = request_pages;
  o.inflight_bytes = inflight_bytes;
  const uint64_t t0 = now_ns();
  const uint64_t id = start_relay(server, o);
  CHECK(id >= 2);
  Restore restore(server, wire::Format::V32);
  std::vector<double> waits;
  for (int i = 0; i < 40 && !server.has_event(ServerEvent::Kind::kRelayDone, id); i++) {
    const uint64_t page = pages - 1 - static_cast<uint64_t>(i) * 97;
    std::vector<uint8_t> buf;
    uint64_t got = 0;
    const uint64_t s = now_ns();
    CHECK(restore.get(404, 0x7e0000000000ull + page * P, 1, &buf, &got) == 0);
    waits.push_back(static_cast<double>(now_ns() - s) / 1e6);
    CHECK(page_ok(buf.data(), 404, 0x7e0000000000ull + page * P));
  }
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  const double pull_ms = static_cast<double>(now_ns() - t0) / 1e6;
  std::sort(waits.begin(), waits.end());
  std::printf("measure: 256 MiB relay, requestPages %llu, inflightBytes %llu: pull %.0f ms (%.0f MiB/s, event ms %llu); "
              "demand GETs during the pull: %zu, median %.2f ms, max %.2f ms\n",
              static_cast<unsigned long long>(request_pages), static_cast<unsigned long long>(inflight_bytes), pull_ms,
              256.0 / (pull_ms / 1000.0), static_cast<unsigned long long>(done.ms), waits.size(),
              waits.empty() ? 0.0 : waits[waits.size() / 2], waits.empty() ? 0.0 : waits.back());
}

// ---- The lazyd link of a relayed checkpoint (docs/protocol.md §7) ----

// What a lazyd lazy-pages gets on one link session, read off the socket byte by byte (no PageClient: the trailer
// is checked here against pages computed from the dump's pattern, not against what the server sent).
struct LinkReply {
  int rc = 0;                  // 0, or -errno: the session ended first (refused)
  wire::HelloReply hello;      // always read first
  wire::Header header;         // the GET reply (rc 0)
  std::vector<uint8_t> pages;  // header.nr_pages pages
  std::vector<uint32_t> crcs;  // the trailer
};

bool read_exactly(int fd, void* out, size_t len, int timeout_ms) {
  uint8_t* p = static_cast<uint8_t*>(out);
  const uint64_t deadline = now_ns() + ms_to_ns(timeout_ms);
  while (len > 0) {
    pollfd r{fd, POLLIN, 0};
    poll(&r, 1, 10);
    ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
    if (n == 0) return false;
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) return false;
      if (now_ns() > deadline) return false;
      continue;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// HELLO (bind|checksum) with token, then one GET; the HELLO reply, and the GET's reply with its trailer.
LinkReply link_get(uint16_t port, wire::Format format, const wire::LinkToken& token, uint64_t pid, uint64_t vaddr,
                   uint64_t nr_pages, int timeout_ms = 10000) {
  LinkReply out;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  CHECK(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  uint8_t request[wire::kHelloSize + wire::HEADER_SIZE_MAX];
  wire::Hello hello;
  hello.features = wire::kFeatureBind | wire::kFeatureChecksum;
  hello.token = token;
  wire::encode_hello(hello, request);
  wire::Header get;
  get.cmd = wire::PS_IOV_GET;
  get.nr_pages = nr_pages;
  get.vaddr = vaddr;
  get.dst_id = pid;
  wire::encode(format, get, request + wire::kHelloSize);
  const size_t len = wire::kHelloSize + wire::header_size(format);
  CHECK(send(fd, request, len, MSG_NOSIGNAL) == static_cast<ssize_t>(len));
  uint8_t answer[wire::kHelloReplySize];
  if (!read_exactly(fd, answer, sizeof answer, timeout_ms) || !wire::decode_hello_reply(answer, &out.hello)) {
    out.rc = -ECONNRESET;
    close(fd);
    return out;
  }
  uint8_t head[wire::HEADER_SIZE_MAX];
  if (out.hello.status != 0 || !read_exactly(fd, head, wire::header_size(format), timeout_ms)) {
    out.rc = out.hello.status != 0 ? out.hello.status : -ECONNRESET;
    close(fd);
    return out;
  }
  out.header = wire::decode(format, head);
  out.pages.resize(out.header.nr_pages * P);
  out.crcs.resize(out.header.nr_pages);
  if (!read_exactly(fd, out.pages.data(), out.pages.size(), timeout_ms) ||
      !read_exactly(fd, out.crcs.data(), out.crcs.size() * 4, timeout_ms)) {
    out.rc = -ECONNRESET;
  }
  close(fd);
  return out;
}

wire::LinkToken token_of(const std::string& hex) {
  wire::LinkToken token{};
  CHECK(wire::token_from_hex(hex.data(), hex.size(), &token));
  return token;
}

// The reply carries pid's pages from vaddr as the dump sent them, and the trailer is the CRC32C of exactly those
// bytes (computed from the dump's pattern here, not from what came over the wire).
void check_link_reply(const LinkReply& reply, uint64_t pid, uint64_t vaddr, uint64_t id) {
  CHECK(reply.rc == 0);
  CHECK(reply.hello.status == 0);
  CHECK(reply.hello.features == (wire::kFeatureBind | wire::kFeatureChecksum));
  CHECK(reply.hello.checkpoint == id);
  CHECK(reply.header.nr_pages >= 1 && reply.header.vaddr == vaddr && reply.header.dst_id == pid);
  std::vector<uint8_t> expected(P);
  for (uint64_t pg = 0; pg < reply.header.nr_pages; pg++) {
    fill_page(expected.data(), pid, vaddr + pg * P);
    CHECK(std::memcmp(reply.pages.data() + pg * P, expected.data(), P) == 0);
    CHECK(reply.crcs[pg] == crc32c(expected.data(), P));
  }
}

// A relayed checkpoint gets a link token when its pull starts, like an upload's: a HELLO with it is granted bind
// and checksum, bound to this checkpoint (its id in the reply), and every reply's trailer is the CRC32C of the
// pages the relay pulled, held by reference (pipes) or copied (memfd). Two relays, two tokens; a token-bound GET
// for the other relay's pid is refused; an unknown token gets -EACCES; a PageClient (lazyd lazy-pages' engine)
// with the HELLO restores every page, checking each.
void test_link_token(wire::Format format, bool by_reference) {
  Server server(1ull << 30);
  Dump dump(format);
  Dump other(format);
  const std::vector<RelayTask> tasks = two_tasks();
  RelayOptions o = options_for(dump, tasks, server);
  o.hold_by_reference = by_reference;
  std::string hex;
  const uint64_t id = start_relay(server, o, nullptr, &hex);
  CHECK(id >= 2);
  CHECK(hex.size() == 2 * wire::kTokenSize);
  CHECK(hex != std::string(2 * wire::kTokenSize, '0'));
  const std::vector<RelayTask> other_tasks = {RelayTask{303, {{0x7e0000000000ull, 9}}}};
  std::string other_hex;
  const uint64_t other_id = start_relay(server, options_for(other, other_tasks, server), nullptr, &other_hex);
  CHECK(other_id > id);
  CHECK(other_hex.size() == 2 * wire::kTokenSize && other_hex != hex);
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, nullptr));
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, other_id, nullptr));
  const wire::LinkToken token = token_of(hex);

  // A span across a pipe boundary and the one-page range.
  const RelayRange& range = tasks[1].ranges[0];
  check_link_reply(link_get(server.port, format, token, tasks[1].pid, range.vaddr + 5 * P, 20), tasks[1].pid, range.vaddr + 5 * P, id);
  const RelayRange& single = tasks[0].ranges[2];
  check_link_reply(link_get(server.port, format, token, tasks[0].pid, single.vaddr, 1), tasks[0].pid, single.vaddr, id);
  check_link_reply(link_get(server.port, format, token_of(other_hex), 303, 0x7e0000000000ull, 9), 303, 0x7e0000000000ull, other_id);

  // One token, one checkpoint: the other relay's pid is refused after the grant; an unknown token is refused.
  // (The grant itself gets out only if the GET was read after it was sent: a failing session drops its queue.)
  const LinkReply outside = link_get(server.port, format, token, 303, 0x7e0000000000ull, 1);
  CHECK(outside.rc < 0 && outside.pages.empty());
  CHECK(outside.hello.checkpoint == 0 || (outside.hello.status == 0 && outside.hello.checkpoint == id));
  wire::LinkToken wrong = token;
  wrong[0] ^= 1;
  const LinkReply unknown = link_get(server.port, format, wrong, tasks[0].pid, tasks[0].ranges[0].vaddr, 1);
  CHECK(unknown.rc == -EACCES);
  CHECK(eventually([&] { return server.server->stats().access_refused == 2; }));

  // lazyd lazy-pages' client: HELLO, then every page of the checkpoint, each checked against its CRC32C.
  Restore restore(server, format);
  wire::Hello hello;
  hello.features = wire::kFeatureBind | wire::kFeatureChecksum;
  hello.token = token;
  restore.client.open_with_hello(hello);
  CHECK(restore.verify_all(tasks));
  CHECK(restore.client.link_checkpoint() == id);
  CHECK(restore.client.checksums());
  CHECK(restore.client.checksum_mismatches() == 0);
}

// A token-bound GET for a page the relay has not pulled yet waits, is fetched from the dump ahead of the bulk,
// and its trailer is the CRC32C of the bytes the dump sent for that demand.
void test_link_demand_ahead_of_bulk(wire::Format format) {
  Server server(1ull << 30);
  Dump dump(format);
  dump.credits = 0;
  const std::vector<RelayTask> tasks = two_tasks(8);
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = 16;
  o.inflight_bytes = 2 * 16 * P;
  std::string hex;
  const uint64_t id = start_relay(server, o, nullptr, &hex);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.gets == 2; }));
  const RelayRange last = tasks[1].ranges[1];
  const uint64_t want = last.vaddr + 5 * P;
  LinkReply reply;
  std::thread restore_thread([&] { reply = link_get(server.port, format, token_of(hex), tasks[1].pid, want, 2); });
  CHECK(eventually([&] { return dump.gets == 3; }));
  CHECK(dump.log()[2] == want);  // the demand, behind the two bulk GETs only
  dump.credits = -1;
  restore_thread.join();
  check_link_reply(reply, tasks[1].pid, want, id);
  ServerEvent done;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayDone, id, &done));
  CHECK(done.demand_requests == 1);
}

// The dump dies mid-pull. Pages copied into the memfd (hold_by_reference off) are still served to a token-bound
// session, with their checksums; a page the relay never got is refused, never answered with zeros. Held by
// reference, the checkpoint is void: even the pages it got are refused.
void test_link_incomplete(bool by_reference) {
  Server server(1ull << 30);
  Dump dump(wire::Format::V32);
  dump.credits = 3;
  const std::vector<RelayTask> tasks = two_tasks(8);
  RelayOptions o = options_for(dump, tasks, server);
  o.request_pages = 16;
  o.inflight_bytes = 2 * 16 * P;
  o.hold_by_reference = by_reference;
  std::string hex;
  const uint64_t id = start_relay(server, o, nullptr, &hex);
  CHECK(id >= 2);
  CHECK(eventually([&] { return dump.replies == 3; }));
  dump.die_after = 3;
  dump.credits = -1;
  CHECK(server.wait_event(ServerEvent::Kind::kRelayFailed, id, nullptr));
  const wire::LinkToken token = token_of(hex);
  const uint64_t first = tasks[0].ranges[0].vaddr;
  const LinkReply held = link_get(server.port, wire::Format::V32, token, tasks[0].pid, first, 1);
  if (by_reference) {
    CHECK(held.rc < 0 && held.pages.empty());
  } else {
    check_link_reply(held, tasks[0].pid, first, id);
  }
  const RelayRange last = tasks[1].ranges[1];
  const LinkReply never = link_get(server.port, wire::Format::V32, token, tasks[1].pid, last.vaddr + 3 * P, 1);
  CHECK(never.rc < 0 && never.pages.empty());  // refused: no page, no zeros
  CHECK(never.hello.checkpoint == 0 || never.hello.status == 0);  // the token was good (if its grant got out)
}

}  // namespace

int main(int argc, char** argv) {
  test_complete_pull(wire::Format::V24, true);
  test_complete_pull(wire::Format::V32, true);
  test_complete_pull(wire::Format::V32, false);
  test_demand_ahead_of_bulk(wire::Format::V24);
  test_demand_ahead_of_bulk(wire::Format::V32);
  test_peer_dies(wire::Format::V24, true);
  test_peer_dies(wire::Format::V32, true);
  test_peer_dies(wire::Format::V32, false);
  test_pipes_run_out();
  test_peer_stalls();
  test_cap_exceeded();
  test_pid_already_staged();
  test_release_while_pulling();
  test_nothing_to_pull();
  test_close_unanswered();
  test_hold_close_release(wire::Format::V24);
  test_hold_close_release(wire::Format::V32);
  test_hold_close_released_early();
  test_hold_close_abort();
  test_restores_retire_while_pulling();
  test_half_closed_waiter();
  test_link_token(wire::Format::V24, true);
  test_link_token(wire::Format::V32, true);
  test_link_token(wire::Format::V32, false);
  test_link_demand_ahead_of_bulk(wire::Format::V24);
  test_link_demand_ahead_of_bulk(wire::Format::V32);
  test_link_incomplete(false);
  test_link_incomplete(true);
  test_pki::make();
  test_tls();
  test_pki::remove();
  if (argc > 1 && std::strcmp(argv[1], "--measure") == 0) {
    measure_demand_latency(256, 4ull << 20);
    measure_demand_latency(256, 1ull << 20);
    measure_demand_latency(1024, 16ull << 20);
    measure_demand_latency(64, 1ull << 20);
  }
  return check_report();
}
