// --allow-from & co (net/access_policy.h) and the page server's two checks, over real loopback sockets:
//   - CIDR blocks: IPv4, IPv6, hosts, prefixes, IPv4 peers of a dual-stack listener (::ffff:a.b.c.d), bad text;
//   - the refusal log: one line per host per interval, the others counted and named in the next line;
//   - at accept: a peer no list covers is reset before a byte is read from it (the server's received bytes stay
//     0), counted, and reported once for many attempts; one covered for fetches is served;
//   - at the first command: an upload from a fetch-only peer and a fetch from an upload-only peer end with one line.
// The loopback network is 127.0.0.0/8: a client bound to 127.0.0.2 or 127.0.0.3 is another host to the server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "net/access_policy.h"
#include "server/page_server.h"
#include "wire/wire.h"

using namespace lazyd;

namespace {

Cidr cidr(const std::string& text) {
  Cidr out;
  std::string error;
  CHECK(parse_cidr(text, &out, &error));
  return out;
}

PeerAddress peer(const std::string& text) {
  PeerAddress p;
  in6_addr v6{};
  in_addr v4{};
  if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
    const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    memcpy(p.addr, mapped, 12);
    memcpy(p.addr + 12, &v4, 4);
  } else {
    CHECK(inet_pton(AF_INET6, text.c_str(), &v6) == 1);
    memcpy(p.addr, &v6, 16);
  }
  p.known = true;
  p.host = text;
  return p;
}

void test_blocks() {
  const Cidr net10 = cidr("10.0.0.0/8");
  CHECK(net10.contains(peer("10.255.1.2").addr));
  CHECK(!net10.contains(peer("11.0.0.1").addr));
  CHECK(net10.contains(peer("::ffff:10.1.2.3").addr));  // an IPv4 peer of a dual-stack listener
  CHECK(!net10.contains(peer("::a01:203").addr));        // IPv4-compatible (not mapped) is IPv6
  const Cidr host = cidr("192.0.2.7");
  CHECK(host.contains(peer("192.0.2.7").addr));
  CHECK(!host.contains(peer("192.0.2.6").addr));
  const Cidr odd = cidr("192.0.2.128/25");
  CHECK(odd.contains(peer("192.0.2.200").addr));
  CHECK(!odd.contains(peer("192.0.2.127").addr));
  const Cidr sloppy = cidr("10.1.2.3/16");  // bits past the prefix are ignored
  CHECK(sloppy.contains(peer("10.1.200.1").addr));
  const Cidr v6 = cidr("2001:db8::/32");
  CHECK(v6.contains(peer("2001:db8:ffff::1").addr));
  CHECK(!v6.contains(peer("2001:db9::1").addr));
  CHECK(cidr("::/0").contains(peer("10.0.0.1").addr));
  CHECK(cidr("0.0.0.0/0").contains(peer("10.0.0.1").addr));
  CHECK(!cidr("0.0.0.0/0").contains(peer("2001:db8::1").addr));
  CHECK(cidr("::1/128").contains(peer("::1").addr));
  Cidr out;
  std::string error;
  CHECK(!parse_cidr("10.0.0.0/33", &out, &error) && error == "\"10.0.0.0/33\": the prefix length must be 0..32");
  CHECK(!parse_cidr("2001:db8::/129", &out, &error) && error.find("0..128") != std::string::npos);
  CHECK(!parse_cidr("example.com", &out, &error) && error.find("not an address block") != std::string::npos);
  CHECK(!parse_cidr("10.0.0.0/", &out, &error));
  CHECK(!parse_cidr("10.0.0.0/-1", &out, &error));
  CHECK(!parse_cidr("10.0.0.0/8x", &out, &error));

  AccessPolicy policy;
  CHECK(policy.address_allows(peer("203.0.113.9"), Permission::kUpload));  // no list: everyone
  policy.fetch_from = {cidr("10.0.1.0/24")};
  CHECK(policy.address_allows(peer("10.0.1.9"), Permission::kFetch));
  CHECK(!policy.address_allows(peer("10.0.1.9"), Permission::kUpload));  // a list given: no upload list, no uploads
  PeerAddress unknown;
  CHECK(!policy.address_allows(unknown, Permission::kFetch));
}

void test_refusal_log() {
  RefusalLog log(1000);
  uint64_t unlogged = 99;
  CHECK(log.should_log("10.0.0.1", 5000, &unlogged) && unlogged == 0);
  CHECK(!log.should_log("10.0.0.1", 5100, &unlogged));
  CHECK(!log.should_log("10.0.0.1", 5999, &unlogged));
  CHECK(log.should_log("10.0.0.2", 5999, &unlogged) && unlogged == 0);  // per host
  CHECK(log.should_log("10.0.0.1", 6001, &unlogged) && unlogged == 2);  // the two counted meanwhile
  CHECK(!log.should_log("10.0.0.1", 6002, &unlogged));
}

int connect_from(const char* from, uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  CHECK(inet_pton(AF_INET, from, &local.sin_addr) == 1);
  CHECK(bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) == 0);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
  return fd;
}

// Sends bytes, then reads until the server ends the connection: the bytes served (-1: reset, with none).
ssize_t exchange(int fd, const void* bytes, size_t len, std::vector<uint8_t>* got) {
  (void)!send(fd, bytes, len, MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  uint8_t buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) return got->empty() ? -1 : static_cast<ssize_t>(got->size());
    if (n == 0) return static_cast<ssize_t>(got->size());
    got->insert(got->end(), buf, buf + n);
  }
}

void test_server_checks() {
  constexpr uint64_t P = 4096, PID = 7, BASE = 0x7f0000000000;
  char path[] = "/tmp/lazyd-access-test-XXXXXX";
  const int file = mkstemp(path);
  CHECK(file >= 0);
  std::vector<uint8_t> page(P, 0x5a);
  CHECK(write(file, page.data(), P) == static_cast<ssize_t>(P));
  close(file);
  auto index = std::make_shared<PageIndex>(P);
  CHECK(index->add_file(path) == 0);
  PageRun run;
  run.vaddr = BASE;
  run.nr_pages = 1;
  run.flags = wire::PE_LAZY | wire::PE_PRESENT;
  run.file = 0;
  CHECK(index->add_task(PID, {run}) == 0);

  PageServerConfig config;
  config.session.max_request_pages = 65536;
  config.session.max_queued_replies = 64;
  config.session.max_queued_bytes = 64ull << 20;
  config.session.format = wire::Format::V24;
  config.upload.format = wire::Format::V24;
  config.upload.max_entry_pages = 262144;
  config.max_sessions = 64;
  config.stall_timeout_ms = 30000;
  config.idle_timeout_ms = 300000;
  config.accept_uploads = true;
  config.staging_max_bytes = 1 << 20;
  config.access.fetch_from = {cidr("127.0.0.1")};
  config.access.upload_from = {cidr("127.0.0.2/32")};
  std::mutex mutex;
  std::vector<ServerEvent> events;
  PageServer server(config, index, [&](const ServerEvent& e) {
    std::lock_guard<std::mutex> lock(mutex);
    events.push_back(e);
  });
  uint16_t port = 0;
  CHECK(server.listen("127.0.0.1", 0, &port) == 0);
  CHECK(server.start() == 0);

  uint8_t get[wire::HEADER_SIZE_MAX] = {};
  wire::Header h;
  h.cmd = wire::PS_IOV_GET;
  h.nr_pages = 1;
  h.vaddr = BASE;
  h.dst_id = PID;
  CHECK(wire::encode(wire::Format::V24, h, get));
  uint8_t open2[wire::HEADER_SIZE_MAX] = {};
  wire::Header o;
  o.cmd = wire::PS_IOV_OPEN2;
  o.dst_id = (PID << 8) | 1;
  CHECK(wire::encode(wire::Format::V24, o, open2));

  // 127.0.0.3 is in no list: reset at accept, nothing read, five attempts, one report.
  for (int i = 0; i < 5; i++) {
    std::vector<uint8_t> got;
    const int fd = connect_from("127.0.0.3", port);
    CHECK(exchange(fd, get, wire::HEADER_SIZE_V24, &got) <= 0);
    CHECK(got.empty());
    close(fd);
  }
  for (int i = 0; i < 500 && server.stats().access_refused < 5; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(server.stats().access_refused == 5);
  CHECK(server.stats().bytes_received == 0);
  CHECK(server.stats().sessions_total == 0);

  // 127.0.0.1 may fetch: served. It may not upload: refused at OPEN2.
  {
    std::vector<uint8_t> got;
    const int fd = connect_from("127.0.0.1", port);
    CHECK(exchange(fd, get, wire::HEADER_SIZE_V24, &got) == static_cast<ssize_t>(wire::HEADER_SIZE_V24 + P));
    CHECK(std::memcmp(got.data() + wire::HEADER_SIZE_V24, page.data(), P) == 0);
    close(fd);
  }
  {
    std::vector<uint8_t> got;
    const int fd = connect_from("127.0.0.1", port);
    CHECK(exchange(fd, open2, wire::HEADER_SIZE_V24, &got) <= 0);
    close(fd);
  }
  // 127.0.0.2 may upload but not fetch.
  {
    std::vector<uint8_t> got;
    const int fd = connect_from("127.0.0.2", port);
    CHECK(exchange(fd, get, wire::HEADER_SIZE_V24, &got) <= 0);
    CHECK(got.empty());
    close(fd);
  }
  for (int i = 0; i < 500 && server.stats().access_refused < 7; i++) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(server.stats().access_refused == 7);
  server.request_stop(0);
  server.join();
  unlink(path);

  std::lock_guard<std::mutex> lock(mutex);
  int refused_lines = 0;
  std::vector<std::string> failures;
  for (const ServerEvent& e : events) {
    if (e.kind == ServerEvent::Kind::kRefused) {
      refused_lines++;
      CHECK(e.message == "connection from 127.0.0.3 refused: no --allow-from, --allow-fetch-from or --allow-upload-from "
                         "block covers it; add its address to one to let it in (logged at most once a minute per host)");
    }
    if (e.kind == ServerEvent::Kind::kSessionEnd && !e.ok) failures.push_back(e.message);
  }
  CHECK(refused_lines == 1);
  CHECK(failures.size() == 2);
  CHECK(failures[0] == "upload refused: 127.0.0.1 may not upload here: no --allow-from or --allow-upload-from block "
                       "covers it; session dropped");
  CHECK(failures[1] == "fetch refused: 127.0.0.2 may not fetch here: no --allow-from or --allow-fetch-from block "
                       "covers it; session dropped");
}

}  // namespace

int main() {
  test_blocks();
  test_refusal_log();
  test_server_checks();
  return check_report();
}
