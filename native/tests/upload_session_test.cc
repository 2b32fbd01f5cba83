// UploadSession: replays the real CRIU 4.1.1 and 4.2.1 upload streams (test/fixtures/criu-*/upload) over
// socketpairs and loopback TCP into both stores and checks the replies, the stored entries and every served
// page against what `criu page-server` wrote (its pages image, rebuilt from the stream and checked against the
// size and sha256 recorded in session.json); then crafted streams: legacy commands, implicit opens, empty
// uploads, and every way an upload must fail without leaving anything behind.
#include <arpa/inet.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <memory>
#include <netinet/in.h>
#include <poll.h>
#include <sstream>
#include <string>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "check.h"
#include "fixtures.h"
#include "staging/memfd_store.h"
#include "pipe_store.h"
#include "server/upload_session.h"

using namespace lazyd;


namespace {

constexpr uint64_t kPage = 4096;

std::string upload_file(const char* version, const char* file) { return fixtures::read(version, "upload", file); }

const fixtures::Json& upload_facts(const char* version) { return fixtures::session(version, "upload"); }

// The dumped task's pid (its pid namespace's init) and the pages of its pagemap without PE_LAZY (the eager ones).
uint64_t upload_pid(const char* version) { return static_cast<uint64_t>(upload_facts(version)["workload"]["ns_pid"].num()); }
uint64_t eager_pages(const char* version) {
  const fixtures::Json& entries = upload_facts(version)["pagemap"]["entries"];
  uint64_t n = 0;
  for (size_t i = 0; i < entries.size(); i++) {
    if (!(entries[i]["flags"].num() & wire::PE_LAZY)) n += static_cast<uint64_t>(entries[i]["nr_pages"].num());
  }
  return n;
}

std::string sha256_hex(const std::string& data) {
  unsigned char digest[32];
  CHECK(gnutls_hash_fast(GNUTLS_DIG_SHA256, data.data(), data.size(), digest) == 0);
  static const char* const digits = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) out += {digits[b >> 4], digits[b & 15]};
  return out;
}

// The pages image criu page-server wrote (not stored twice in the repository): the data of the stream's
// ADD_F messages in order, checked against the size and sha256 the recorder took of criu's own file.
std::string page_server_pages_image(const char* version) {
  const std::string stream = upload_file(version, "client-to-server.bin");
  const size_t header = std::string(version) == "4.1.1" ? 24 : 32;
  std::string image;
  for (size_t off = 0; off + header <= stream.size();) {
    uint32_t cmd;
    memcpy(&cmd, &stream[off], 4);
    uint64_t nr = 0;
    if (header == 24) {
      uint32_t nr32;
      memcpy(&nr32, &stream[off + 4], 4);
      nr = nr32;
    } else {
      memcpy(&nr, &stream[off + 8], 8);
    }
    const bool data = (cmd & 0xffff) == wire::PS_IOV_ADD_F && ((cmd >> wire::PS_CMD_BITS) & wire::PE_PRESENT);
    const size_t bytes = data ? nr * kPage : 0;
    image.append(stream, off + header, bytes);
    off += header + bytes;
  }
  const fixtures::Json& derived = upload_facts(version)["derived"];
  const std::string name = "page-server-images/pages-" + std::to_string(upload_facts(version)["pagemap"]["head"]["pages_id"].num()) + ".img";
  CHECK(derived.has(name));
  CHECK(image.size() == static_cast<size_t>(derived[name]["bytes"].num()));
  CHECK(sha256_hex(image) == derived[name]["sha256"].str());
  return image;
}

struct Row {
  uint64_t off;
  std::string op;
  uint32_t cmd;
  uint64_t nr_pages;
  uint64_t vaddr;
  uint64_t dst_id;
};

// transcript.tsv: the c2s messages (idx t_ms dir off hdr_len cmd op flags nr_pages vaddr dst_id payload_len note).
std::vector<Row> read_transcript(const char* version) {
  std::istringstream in(upload_file(version, "transcript.tsv"));
  std::vector<Row> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line.compare(0, 3, "idx") == 0) continue;
    std::vector<std::string> f;
    std::istringstream fields(line);
    std::string field;
    while (std::getline(fields, field, '\t')) f.push_back(field);
    CHECK(f.size() >= 12);
    if (f[2] != "c2s") continue;
    rows.push_back(Row{std::stoull(f[3]), f[6], static_cast<uint32_t>(std::stoul(f[5], nullptr, 16)),
                       std::stoull(f[8]), std::stoull(f[9], nullptr, 16), std::stoull(f[10], nullptr, 16)});
  }
  return rows;
}

// ---- crafted headers ----
std::string h24(uint32_t cmd, uint32_t nr, uint64_t vaddr, uint64_t dst) {
  std::string b(24, '\0');
  memcpy(&b[0], &cmd, 4);
  memcpy(&b[4], &nr, 4);
  memcpy(&b[8], &vaddr, 8);
  memcpy(&b[16], &dst, 8);
  return b;
}
std::string h32(uint32_t cmd, uint64_t nr, uint64_t vaddr, uint64_t dst, uint32_t pad = 0) {
  std::string b(32, '\0');
  memcpy(&b[0], &cmd, 4);
  memcpy(&b[4], &pad, 4);
  memcpy(&b[8], &nr, 8);
  memcpy(&b[16], &vaddr, 8);
  memcpy(&b[24], &dst, 8);
  return b;
}
uint32_t addf(uint32_t flags) { return (flags << wire::PS_CMD_BITS) | wire::PS_IOV_ADD_F; }
std::string pages(uint64_t n, char seed) {
  std::string out(n * kPage, '\0');
  for (size_t i = 0; i < out.size(); i++) out[i] = static_cast<char>(seed + i * 7 + (i >> 12));
  return out;
}
std::string i32(int32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }

// ---- running a session ----
enum class SocketKind { kUnix, kTcp };
enum class StoreKind { kPipe, kMemfd };

std::unique_ptr<PageStore> new_store(StoreKind kind, const StoreLimits& limits) {
  if (kind == StoreKind::kPipe) {
    PipeStoreOptions o;
    o.limits = limits;
    return std::make_unique<PipeStore>(o);
  }
  MemfdStoreOptions o;
  o.limits = limits;
  return std::make_unique<MemfdStore>(o);
}

struct Outcome {
  UploadSession::Status status = UploadSession::Status::kOpen;
  std::string replies;
  std::string error;
  std::string note;
  bool committed = false;
  UploadStats stats;
  wire::Format format = wire::Format::Unknown;
  std::shared_ptr<PageStore> store;
};

void socket_pair(SocketKind t, int out[2]) {
  if (t == SocketKind::kUnix) {
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, out) == 0);
    return;
  }
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  CHECK(listen(ls, 1) == 0);
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  out[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(connect(out[1], reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  out[0] = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  CHECK(out[0] >= 0);
  close(ls);
}

// The client writes `stream` in pieces of assorted sizes (splitting headers and payloads), then reads replies
// until it has `expect_replies` bytes (or EOF) and closes, as CRIU's client closes after the CLOSE status.
// The server side runs the session in a poll loop until it ends.
// With reset (TCP), the client closes with SO_LINGER 0 (after the replies it waits for): the session sees a reset.
Outcome run(const std::string& stream, size_t expect_replies, StoreKind kind, SocketKind transport,
            UploadLimits limits = UploadLimits(), StoreLimits store_limits = StoreLimits(), bool reset = false) {
  int sv[2];
  socket_pair(transport, sv);
  CHECK(fcntl(sv[0], F_SETFL, O_NONBLOCK) == 0);
  Outcome out;
  std::thread client([&] {
    static const size_t pieces[] = {1, 3, 20, 4096, 100000, 7, 65536, 31, 1 << 20};
    size_t off = 0;
    for (size_t i = 0; off < stream.size(); i++) {
      const size_t len = std::min(pieces[i % (sizeof pieces / sizeof pieces[0])], stream.size() - off);
      ssize_t n = send(sv[1], stream.data() + off, len, MSG_NOSIGNAL);
      if (n <= 0) break;  // the session failed and hung up
      off += static_cast<size_t>(n);
    }
    char buf[256];
    while (out.replies.size() < expect_replies) {
      ssize_t n = read(sv[1], buf, sizeof buf);
      if (n <= 0) break;
      out.replies.append(buf, static_cast<size_t>(n));
    }
    if (reset) {
      // Reset only once the session has read every byte sent: a reset discards what is still queued (unsent
      // here, held back by Nagle, or unread there). The deadline is one only a failure reaches.
      for (int waited_ms = 0; waited_ms < 30000; waited_ms++) {
        int unsent = 0, unread = 0;
        if (ioctl(sv[1], TIOCOUTQ, &unsent) != 0 || ioctl(sv[0], FIONREAD, &unread) != 0) break;
        if (unsent == 0 && unread == 0) break;
        usleep(1000);
      }
      const linger abort_on_close{1, 0};
      CHECK(setsockopt(sv[1], SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close) == 0);
    }
    close(sv[1]);
  });
  {
    UploadSession session(sv[0], new_store(kind, store_limits), limits);
    UploadSession::Status status = UploadSession::Status::kOpen;
    int idle_ms = 0;
    while (status == UploadSession::Status::kOpen && idle_ms < 10000) {
      pollfd p{session.fd(), 0, 0};
      if (session.wants_read()) p.events |= POLLIN;
      if (session.wants_write()) p.events |= POLLOUT;
      int n = poll(&p, 1, 100);
      if (n == 0) {
        idle_ms += 100;
        continue;
      }
      if (p.revents & POLLOUT) status = session.on_writable();
      if (status == UploadSession::Status::kOpen && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        status = session.on_readable();
      }
    }
    CHECK(status != UploadSession::Status::kOpen);  // no hang
    out.status = status;
    out.error = session.error();
    out.note = session.note();
    out.committed = session.committed();
    out.stats = session.stats();
    out.format = session.format();
    out.store = session.take_store();
    CHECK(out.committed == (out.store != nullptr));
    CHECK(out.committed == (status == UploadSession::Status::kDone));
    CHECK(out.committed || !out.error.empty());
  }  // the session closes its socket: a client still waiting for replies sees EOF
  client.join();
  return out;
}

bool contains(const std::string& text, const char* part) {
  if (text.find(part) != std::string::npos) return true;
  fprintf(stderr, "expected \"%s\" in: %s\n", part, text.c_str());
  return false;
}

// ---- the real streams ----
void check_served_pages(const PageStore& store, const std::vector<Row>& rows, const std::string& image, uint64_t pid) {
  uint64_t offset = 0;
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  for (const Row& row : rows) {
    if (row.op != "ADD_F") continue;
    // Page by page, twice (nothing consumed).
    for (int round = 0; round < 2; round++) {
      for (uint64_t p = 0; p < row.nr_pages; p++) {
        CHECK(store.serve(pid_key(pid), row.vaddr + p * kPage, 1, sv[0]) == 1);
        std::string got(kPage, '\0');
        CHECK(recv(sv[1], &got[0], kPage, MSG_WAITALL) == static_cast<ssize_t>(kPage));
        CHECK(memcmp(got.data(), image.data() + offset + p * kPage, kPage) == 0);
      }
    }
    // The whole entry at once, asked for more than it holds: clamped.
    std::string got;
    std::thread reader([&] {
      got.resize(row.nr_pages * kPage);
      CHECK(recv(sv[1], &got[0], got.size(), MSG_WAITALL) == static_cast<ssize_t>(got.size()));
    });
    CHECK(store.serve(pid_key(pid), row.vaddr, row.nr_pages + 100, sv[0]) == static_cast<int64_t>(row.nr_pages));
    reader.join();
    CHECK(memcmp(got.data(), image.data() + offset, got.size()) == 0);
    offset += row.nr_pages * kPage;
  }
  CHECK(offset == image.size());
  close(sv[0]);
  close(sv[1]);
}

void test_replay(const char* version, StoreKind kind, SocketKind transport, bool detect) {
  const std::string stream = upload_file(version, "client-to-server.bin");
  const std::string expected = upload_file(version, "server-to-client.bin");
  const std::string image = page_server_pages_image(version);
  const std::vector<Row> rows = read_transcript(version);
  const fixtures::Json& facts = upload_facts(version);
  const uint64_t pid = upload_pid(version);
  const size_t pagemap_entries = facts["pagemap"]["entries"].size();
  const uint64_t pages_with_data = static_cast<uint64_t>(facts["stream"]["pages_with_data"].num());
  const wire::Format format = std::string(version) == "4.1.1" ? wire::Format::V24 : wire::Format::V32;
  UploadLimits limits;
  if (!detect) limits.format = format;
  Outcome out = run(stream, expected.size(), kind, transport, limits);
  if (!out.committed) fprintf(stderr, "%s\n", out.error.c_str());
  CHECK(out.committed);
  CHECK(out.replies == expected);  // OPEN2 has_parent 0, CLOSE status 0: byte for byte
  CHECK(out.format == format);
  CHECK(out.stats.close_seen);
  CHECK(out.stats.opens == 1 && out.stats.implicit_opens == 0);
  CHECK(out.stats.bytes_in == stream.size());
  const PageStore& store = *out.store;
  CHECK(store.sealed());
  CHECK(store.keys().size() == 1 && store.keys()[0] == pid_key(pid));
  // The stored entries are the transcript's ADD_F headers, in order.
  const std::vector<StoreEntry>& entries = *store.entries(pid_key(pid));
  size_t i = 0;
  uint64_t data_pages = 0;
  for (const Row& row : rows) {
    if (row.op != "ADD_F") continue;
    CHECK(i < entries.size());
    CHECK(row.dst_id == ((pid << wire::PS_TYPE_BITS) | wire::PS_TYPE_PID));
    CHECK(entries[i].vaddr == row.vaddr);
    CHECK(entries[i].nr_pages == row.nr_pages);
    CHECK(entries[i].flags == row.cmd >> 16);
    data_pages += row.nr_pages;
    i++;
  }
  CHECK(i == entries.size() && i == pagemap_entries);
  CHECK(out.stats.entries == pagemap_entries && out.stats.pages_with_data == pages_with_data && data_pages == pages_with_data);
  CHECK(store.bytes_held() == image.size());
  check_served_pages(store, rows, image, pid);
  // The pages image of the pagemap, as `criu page-server` wrote it; and the eager part alone.
  FILE* all = tmpfile();
  FILE* eager = tmpfile();
  CHECK(store.write_pages(pid_key(pid), fileno(all), true) == static_cast<int64_t>(image.size()));
  std::string written(image.size(), '\0');
  CHECK(pread(fileno(all), &written[0], written.size(), 0) == static_cast<ssize_t>(written.size()));
  CHECK(written == image);
  std::string expected_eager;
  uint64_t offset = 0;
  for (const StoreEntry& e : entries) {
    if (!(e.flags & wire::PE_LAZY)) expected_eager += image.substr(offset, e.nr_pages * kPage);
    offset += e.nr_pages * kPage;
  }
  CHECK(expected_eager.size() == eager_pages(version) * kPage);  // the workload's eager pages
  CHECK(store.write_pages(pid_key(pid), fileno(eager), false) == static_cast<int64_t>(expected_eager.size()));
  written.assign(expected_eager.size(), '\0');
  CHECK(pread(fileno(eager), &written[0], written.size(), 0) == static_cast<ssize_t>(written.size()));
  CHECK(written == expected_eager);
  fclose(all);
  fclose(eager);
  CHECK(store.write_pages(pid_key(pid + 1), 1, true) == -ENOENT);
  PageKey key;
  CHECK(key_from_get_pid(pid, &key) && key == pid_key(pid));
  CHECK(!key_from_get_pid((1ull << 56) | pid, &key));  // would alias the pid through pid_key()
  printf("  replay %s %-5s %-4s %s: committed, replies and %zu served bytes exact (%llu fds)\n", version,
         kind == StoreKind::kPipe ? "pipe" : "memfd", transport == SocketKind::kTcp ? "tcp" : "unix",
         detect ? "detected" : "given", image.size(), static_cast<unsigned long long>(store.resources().fds));
}

// ---- failures: nothing is kept ----
void test_failures(const char* version, StoreKind kind) {
  const std::string stream = upload_file(version, "client-to-server.bin");
  const std::vector<Row> rows = read_transcript(version);
  const fixtures::Json& facts = upload_facts(version);
  const size_t pagemap_entries = facts["pagemap"]["entries"].size();
  // The big entry: the one holding the workload's data area (over 1 MiB), and the entries before it.
  const size_t big_index = static_cast<size_t>(facts["workload"]["data_area"]["entry_index"].num());
  const uint64_t big_pages = static_cast<uint64_t>(facts["pagemap"]["entries"][big_index]["nr_pages"].num());
  const std::string big_bytes = std::to_string(big_pages * kPage);
  const std::string big_nr = "nr_pages " + std::to_string(big_pages);
  uint64_t big_entry = 0, close_off = 0;
  size_t adds = 0;
  for (const Row& row : rows) {
    if (row.op == "ADD_F" && adds++ == big_index) {
      CHECK(row.nr_pages == big_pages);
      big_entry = row.off;
    }
    if (row.op == "CLOSE") close_off = row.off;
  }
  CHECK(big_entry && close_off);
  CHECK(big_pages * kPage > (1u << 20));  // the memory cap case below needs it over 1 MiB
  const size_t header = std::string(version) == "4.1.1" ? 24 : 32;
  StoreLimits shared;
  shared.budget = std::make_shared<MemoryBudget>(64 << 20);

  // EOF in the middle of a payload.
  Outcome cut = run(stream.substr(0, big_entry + header + 5000), 1, kind, SocketKind::kTcp, UploadLimits(), shared);
  CHECK(!cut.committed && cut.store == nullptr);
  CHECK(contains(cut.error, ("disconnected after 5000 of " + big_bytes + " payload bytes").c_str()));
  CHECK(contains(cut.error, "nothing of this upload is kept"));
  CHECK(shared.budget->used() == 0);  // the private store is gone, its bytes released

  // A reset in the middle of a payload (the dump's host or the network died): named as such, not as a store
  // error; the bytes that arrived before the reset are still read.
  Outcome reset = run(stream.substr(0, big_entry + header + 5000), 1, kind, SocketKind::kTcp, UploadLimits(), shared, true);
  CHECK(!reset.committed && reset.store == nullptr);
  CHECK(contains(reset.error, (big_nr + " flags PE_LAZY|PE_PRESENT: the dump's connection broke after 5000 of " + big_bytes +
                               " payload bytes (Connection reset by peer): nothing of this upload is kept").c_str()));
  CHECK(shared.budget->used() == 0);

  // A reset after CLOSE while lazyd still holds its status back (writing the images): the dump never got it.
  UploadLimits held;
  held.hold_close_reply = true;
  Outcome early = run(stream, 1, kind, SocketKind::kTcp, held, shared, true);
  CHECK(!early.committed && early.store == nullptr);
  CHECK(contains(early.error, "the dump's connection broke after its CLOSE, before lazyd's CLOSE status had left (Connection reset by peer): nothing of this upload is kept"));
  CHECK(shared.budget->used() == 0);

  // A reset after the CLOSE status has left: the dump may have read it, succeeded and ended the tasks, so the
  // upload is kept (committed, with a note), never dropped.
  Outcome late = run(stream, 5, kind, SocketKind::kTcp, UploadLimits(), shared, true);
  CHECK(late.replies.size() == 5);
  CHECK(late.committed && late.store != nullptr && late.status == UploadSession::Status::kDone);
  CHECK(contains(late.note, "the dump's connection broke after lazyd had sent its CLOSE status (Connection reset by peer)"));
  CHECK(late.stats.entries == pagemap_entries);
  late.store.reset();
  CHECK(shared.budget->used() == 0);

  // EOF at a header boundary without CLOSE ("The data were not flushed").
  Outcome noclose = run(stream.substr(0, close_off), 1, kind, SocketKind::kUnix, UploadLimits(), shared);
  CHECK(!noclose.committed && noclose.store == nullptr);
  CHECK(contains(noclose.error, "the dump disconnected before CLOSE: nothing of this upload is kept"));
  CHECK(noclose.stats.entries == pagemap_entries);  // everything else had arrived
  CHECK(shared.budget->used() == 0);

  // EOF inside the CLOSE header.
  Outcome half = run(stream.substr(0, close_off + 10), 1, kind, SocketKind::kUnix, UploadLimits(), shared);
  CHECK(!half.committed);
  CHECK(contains(half.error, "after 10 bytes of a header"));

  // Data after CLOSE.
  Outcome extra = run(stream + "x", 5, kind, SocketKind::kUnix, UploadLimits(), shared);
  CHECK(!extra.committed);
  CHECK(contains(extra.error, "data after CLOSE"));

  // The memory cap refuses the upload at the entry that would exceed it.
  StoreLimits small;
  small.budget = std::make_shared<MemoryBudget>(1 << 20);
  Outcome capped = run(stream, 5, kind, SocketKind::kTcp, UploadLimits(), small);
  CHECK(!capped.committed && capped.store == nullptr);
  CHECK(contains(capped.error, big_nr.c_str()));
  CHECK(contains(capped.error, "staging memory cap of 1048576 bytes"));
  CHECK(capped.stats.entries == big_index);  // the entries before it fit
  CHECK(capped.replies.size() == 1);  // only the OPEN2 answer; no CLOSE status ever
  CHECK(small.budget->used() == 0);

  // Entry size cap.
  UploadLimits few;
  few.max_entry_pages = 100;
  Outcome big = run(stream, 5, kind, SocketKind::kUnix, few);
  CHECK(!big.committed);
  CHECK(contains(big.error, "more than the limit of 100 pages per entry"));
}

void test_crafted(StoreKind kind) {
  const uint64_t pid1 = (1 << 8) | wire::PS_TYPE_PID;
  const uint64_t shm3 = (3 << 8) | wire::PS_TYPE_SHMEM;
  const std::string close24 = h24(wire::PS_IOV_CLOSE, 0, 0, 0);
  const std::string close32 = h32(wire::PS_IOV_CLOSE, 0, 0, 0);
  const std::string a = pages(2, 'a'), b = pages(3, 'b'), c = pages(1, 'c');

  // Legacy commands and implicit opens (24-byte): ADD_F without OPEN2, PARENT, OPEN, ADD, HOLE, a switch to
  // a shmem pagemap by ADD, legacy type numbers.
  {
    std::string s = h24(addf(wire::PE_PRESENT | wire::PE_LAZY), 2, 0x10000, pid1) + a +  // implicit open pid 1
                    h24(wire::PS_IOV_PARENT, 0, 0, (1 << 8) | 10) +                       // -> int 0
                    h24(wire::PS_IOV_HOLE, 4, 0x20000, pid1) +                            // PE_PARENT, no data
                    h24(addf(wire::PE_LAZY), 8, 0x30000, pid1) +                          // lazy, no data
                    h24(wire::PS_IOV_ADD, 3, 0x40000, (3 << 8) | 27) + b +                // implicit open shmem 3
                    h24(wire::PS_IOV_OPEN, 0, 0, (9 << 8) | 16) +                         // legacy OPEN pid 9
                    h24(wire::PS_IOV_OPEN2, 0, 0, (5 << 8) | 1) +                         // empty pagemap pid 5
                    h24(addf(wire::PE_PRESENT), 1, 0x90000, shm3) + c +                   // back to shmem 3
                    close24;
    // shmem 3 was opened before: switching back to it must fail (CRIU would start its pagemap over).
    Outcome o = run(s, 9, kind, SocketKind::kUnix);
    CHECK(!o.committed);
    CHECK(contains(o.error, "shmem 3: this pagemap was already opened in this upload"));
  }
  {
    std::string s = h24(addf(wire::PE_PRESENT | wire::PE_LAZY), 2, 0x10000, pid1) + a +
                    h24(wire::PS_IOV_PARENT, 0, 0, (1 << 8) | 10) + h24(wire::PS_IOV_HOLE, 4, 0x20000, pid1) +
                    h24(addf(wire::PE_LAZY), 8, 0x30000, pid1) + h24(wire::PS_IOV_ADD, 3, 0x40000, (3 << 8) | 27) + b +
                    h24(wire::PS_IOV_OPEN, 0, 0, (9 << 8) | 16) + h24(addf(wire::PE_PRESENT), 1, 0x5000, (9 << 8) | 1) + c +
                    h24(wire::PS_IOV_OPEN2, 0, 0, (5 << 8) | 1) + close24;
    const std::string expected = i32(0) + std::string(1, '\0') + i32(0);  // PARENT, OPEN2, CLOSE
    Outcome o = run(s, expected.size(), kind, SocketKind::kTcp);
    if (!o.committed) fprintf(stderr, "%s\n", o.error.c_str());
    CHECK(o.committed);
    CHECK(o.replies == expected);
    CHECK(o.format == wire::Format::V24);
    CHECK(o.stats.implicit_opens == 2 && o.stats.opens == 4);
    CHECK(o.stats.pages_with_data == 6 && o.stats.pages_without_data == 12);
    const PageStore& st = *o.store;
    CHECK(st.keys().size() == 4);
    CHECK(st.keys()[0] == pid_key(1) && st.keys()[1] == shmem_key(3) && st.keys()[2] == pid_key(9) &&
          st.keys()[3] == pid_key(5));
    const auto& e1 = *st.entries(pid_key(1));
    CHECK(e1.size() == 3);
    CHECK(e1[1].vaddr == 0x20000 && e1[1].nr_pages == 4 && e1[1].flags == wire::PE_PARENT);
    CHECK(e1[2].flags == wire::PE_LAZY);
    CHECK(st.entries(shmem_key(3))->size() == 1 && (*st.entries(shmem_key(3)))[0].flags == wire::PE_PRESENT);
    CHECK(st.entries(pid_key(5))->empty());
    StoreSpan span;
    CHECK(st.lookup(pid_key(1), 0x20000, 1, &span) == LookupResult::kNoData);
    CHECK(st.lookup(pid_key(1), 0x30000, 1, &span) == LookupResult::kNoData);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(st.serve(pid_key(1), 0x10000, 9, sv[0]) == 2);
    CHECK(st.serve(shmem_key(3), 0x41000, 9, sv[0]) == 2);
    CHECK(st.serve(pid_key(9), 0x5000, 1, sv[0]) == 1);
    std::string got(5 * kPage, '\0');
    CHECK(recv(sv[1], &got[0], got.size(), MSG_WAITALL) == static_cast<ssize_t>(got.size()));
    CHECK(got == a + b.substr(kPage) + c);
    close(sv[0]);
    close(sv[1]);
  }
  // 32-byte stream with stack garbage in the padding; CLOSE answered.
  {
    std::string s = h32(wire::PS_IOV_OPEN2, 0, 0, shm3, 0xdeadbeef) +
                    h32(addf(wire::PE_PRESENT), 2, 0x0, shm3, 0x12345678) + a +
                    h32(addf(wire::PE_PRESENT), 1, 0x3000, shm3, 0xffffffff) + c + h32(wire::PS_IOV_FORCE_CLOSE, 0, 0, 0);
    Outcome o = run(s, 5, kind, SocketKind::kUnix);
    CHECK(o.committed);
    CHECK(o.replies == std::string(1, '\0') + i32(0));
    CHECK(o.format == wire::Format::V32);
    CHECK(o.store->bytes_held() == 3 * kPage);
  }
  // An upload of nothing: CLOSE first, in either layout (the 32-byte one has 8 more zero bytes).
  for (const std::string& s : {close24, close32}) {
    Outcome o = run(s, 4, kind, SocketKind::kUnix);
    CHECK(o.committed);
    CHECK(o.replies == i32(0));
    CHECK(o.store->keys().empty());
  }
  // dump --lazy-pages style: PE_LAZY entries without data, then the next header at once.
  {
    std::string s = h24(wire::PS_IOV_OPEN2, 0, 0, pid1) + h24(addf(wire::PE_LAZY), 100, 0x100000, pid1) +
                    h24(addf(wire::PE_PRESENT), 1, 0x200000, pid1) + c + h24(addf(wire::PE_LAZY), 5, 0x300000, pid1) +
                    close24;
    Outcome o = run(s, 5, kind, SocketKind::kTcp);
    CHECK(o.committed);
    CHECK(o.store->entries(pid_key(1))->size() == 3);
    CHECK(o.store->bytes_held() == kPage);
  }
  // Malformed input: one clear message each.
  struct Bad {
    std::string stream;
    const char* message;
  };
  const std::string open = h24(wire::PS_IOV_OPEN2, 0, 0, pid1);
  const Bad bad[] = {
      {open + h24(0x99, 0, 0, pid1), "unknown command 0x99"},
      {h24(wire::PS_IOV_OPEN2, 0, 0, (1 << 8) | 5), "unknown pagemap type 5"},
      {open + h24(addf(wire::PE_PRESENT), 1, 0x10800, pid1) + c, "vaddr is not page-aligned"},
      {open + h24(addf(wire::PE_PRESENT), 0, 0x10000, pid1), "nr_pages is 0"},
      {open + h24(addf(wire::PE_PRESENT), 1, 0x10000, pid1) + c + h24(addf(wire::PE_PRESENT), 1, 0x10000, pid1) + c,
       "overlaps or precedes"},
      {open + h24(addf(wire::PE_PRESENT), 2, 0x20000, pid1) + a + h24(addf(wire::PE_LAZY), 1, 0x1000, pid1),
       "overlaps or precedes"},
      {open + h24(addf(wire::PE_PRESENT | wire::PE_PARENT), 1, 0x10000, pid1) + c, "bad flags"},
      {open + h24(addf(8 | wire::PE_PRESENT), 1, 0x10000, pid1) + c, "bad flags"},
      {open + h24(wire::PS_IOV_GET, 1, 0x10000, 1), "GET on an upload connection"},
      {open + h24(wire::PS_IOV_OPEN2, 0, 0, pid1), "pid 1: this pagemap was already opened"},
      {h24(0x1234, 0, 0, 0), "malformed first header"},
  };
  for (const Bad& b : bad) {
    Outcome o = run(b.stream + close24, 5, kind, SocketKind::kUnix);
    CHECK(!o.committed && o.store == nullptr);
    CHECK(contains(o.error, b.message));
  }
}

}  // namespace

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  for (const char* version : {"4.1.1", "4.2.1"}) {
    for (StoreKind kind : {StoreKind::kPipe, StoreKind::kMemfd}) {
      test_replay(version, kind, SocketKind::kUnix, true);
      test_replay(version, kind, SocketKind::kTcp, true);
      test_replay(version, kind, SocketKind::kTcp, false);
      test_failures(version, kind);
    }
  }
  for (StoreKind kind : {StoreKind::kPipe, StoreKind::kMemfd}) test_crafted(kind);
  return check_report();
}
