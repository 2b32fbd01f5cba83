// libFuzzer target: the page server's per-connection state machines fed a client byte stream. The input is
// what a peer sends; it is routed by its first command as PageServer::route() does (an upload command starts
// an UploadSession into a MemfdStore, anything else a LazySession) and driven over a socketpair until the
// session ends. Built and run by scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
//
// The lazy session serves a small checkpoint whose every byte is known (pid 1 from a "pages image" memfd,
// pid 3 from a staged MemfdStore), so every reply is checked: an ADD_F|PE_PRESENT header for a range inside
// one lazy entry of that pid with data, nr_pages within the request and the limit, followed by exactly that
// range's bytes; a CLOSE status is 4 zero bytes and nothing follows it. An upload's replies are OPEN2/PARENT/
// CLOSE statuses (all zero bytes), and its store never exceeds the budget. A session that stops making
// progress with its input all delivered is a hang (trap).
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

#include "server/lazy_session.h"
#include "server/page_index.h"
#include "server/upload_session.h"
#include "staging/memfd_store.h"
#include "util/crc32c.h"
#include "wire/link_ext.h"
#include "wire/page_checksums.h"
#include "wire/wire.h"

#include "fuzz_check.h"

using namespace lazyd;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMaxRequestPages = 32;

// The known checkpoint: pid 1's entries (image offsets into one file), pid 3 staged.
struct Run {
  uint64_t pid, vaddr, nr_pages;
  uint32_t flags;
  uint64_t file_offset;  // into the image, or into the staged store's stream
};
const Run kRuns[] = {
    {1, 0x7f0000000000, 64, wire::PE_LAZY | wire::PE_PRESENT, 0},
    {1, 0x7f0000100000, 8, wire::PE_PRESENT, 64 * kPage},            // eager: never served lazily
    {1, 0x7f0000200000, 8, wire::PE_LAZY, 0},                        // no data
    {1, 0x7f0000300000, 4, wire::PE_LAZY | wire::PE_PRESENT, 72 * kPage},
    {3, 0x7e0000000000, 16, wire::PE_LAZY | wire::PE_PRESENT, 0},    // staged
};
constexpr uint64_t kImagePages = 76;

uint8_t image_byte(uint64_t offset) { return static_cast<uint8_t>((offset * 2654435761u) >> 13) ^ static_cast<uint8_t>(offset >> 12); }
uint8_t staged_byte(uint64_t offset) { return static_cast<uint8_t>(0xa5 ^ (offset * 40503u >> 7)); }

struct Checkpoint : StagedLookup {
  std::unique_ptr<PageIndex> index;
  std::shared_ptr<StagedCheckpoint> staged;
  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override { return pid == 3 ? staged : nullptr; }
  // The staged checkpoint's link token is 16 bytes of 0x11 (a HELLO the fuzzer may find).
  std::shared_ptr<const StagedCheckpoint> find_token(const wire::LinkToken& token) const override {
    for (uint8_t b : token) {
      if (b != 0x11) return nullptr;
    }
    return staged;
  }
};

Checkpoint* make_checkpoint() {
  auto* checkpoint = new Checkpoint;
  int fd = memfd_create("fuzz-pages-image", MFD_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  std::vector<uint8_t> bytes(kImagePages * kPage);
  for (uint64_t i = 0; i < bytes.size(); i++) bytes[i] = image_byte(i);
  FUZZ_CHECK(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  checkpoint->index = std::make_unique<PageIndex>(kPage);
  FUZZ_CHECK(checkpoint->index->add_file("/proc/self/fd/" + std::to_string(fd)) == 0);
  close(fd);
  std::vector<PageRun> runs;
  for (const Run& run : kRuns) {
    if (run.pid != 1) continue;
    PageRun page_run;
    page_run.vaddr = run.vaddr;
    page_run.nr_pages = run.nr_pages;
    page_run.flags = run.flags;
    page_run.file = (run.flags & wire::PE_PRESENT) ? 0 : -1;
    page_run.file_offset = run.file_offset;
    runs.push_back(page_run);
  }
  FUZZ_CHECK(checkpoint->index->add_task(1, runs) == 0);

  MemfdStoreOptions options;
  options.fill = MemfdStoreOptions::Fill::kRead;
  auto store = std::make_shared<MemfdStore>(options);
  FUZZ_CHECK(store->init_error() == 0);
  const Run& staged = kRuns[4];
  FUZZ_CHECK(store->begin_entry(pid_key(3), staged.vaddr, staged.nr_pages, staged.flags) == 0);
  std::vector<uint8_t> staged_bytes(staged.nr_pages * kPage);
  for (uint64_t i = 0; i < staged_bytes.size(); i++) staged_bytes[i] = staged_byte(i);
  FUZZ_CHECK(store->receive_bytes(staged_bytes.data(), staged_bytes.size()) == static_cast<ssize_t>(staged_bytes.size()));
  FUZZ_CHECK(store->seal() == 0);
  checkpoint->staged = std::make_shared<StagedCheckpoint>();
  checkpoint->staged->id = 7;
  checkpoint->staged->token.fill(0x11);
  checkpoint->staged->has_token = true;
  checkpoint->staged->store = store;
  return checkpoint;
}

uint64_t load(const uint8_t* p, size_t n) {
  uint64_t v = 0;
  memcpy(&v, p, n);
  return v;
}

// Checks a lazy session's whole output. complete: the session ended cleanly (no partial reply allowed).
void check_lazy_output(const std::vector<uint8_t>& out, wire::Format format, bool clean) {
  size_t off = 0;
  bool checksums = false;  // feature checksum granted: each reply ends with a CRC32C per page (§7.4)
  // A HELLO reply (docs/protocol.md §7) comes first if at all: granted (bound to checkpoint 7) or refused.
  if (out.size() >= 4 && load(&out[0], 4) == wire::kHelloMagic) {
    if (out.size() < wire::kHelloReplySize) {
      FUZZ_CHECK(!clean);
      return;
    }
    wire::HelloReply reply;
    FUZZ_CHECK(wire::decode_hello_reply(out.data(), &reply));
    FUZZ_CHECK(reply.status == 0 ? reply.checkpoint == 7 : (reply.checkpoint == 0 && out.size() == wire::kHelloReplySize));
    FUZZ_CHECK((reply.features & ~wire::kKnownFeatures) == 0);
    checksums = (reply.features & wire::kFeatureChecksum) != 0;
    off = wire::kHelloReplySize;
  }
  const size_t head = format == wire::Format::Unknown ? 0 : wire::header_size(format);
  while (off < out.size()) {
    const size_t left = out.size() - off;
    if (head != 0 && left >= 4 && load(&out[off], 4) == wire::GET_REPLY_CMD) {
      if (left < head) {
        FUZZ_CHECK(!clean);
        return;
      }
      const wire::Header h = wire::decode(format, &out[off]);
      FUZZ_CHECK(h.nr_pages >= 1 && h.nr_pages <= kMaxRequestPages);
      FUZZ_CHECK(h.vaddr % kPage == 0);
      const Run* run = nullptr;
      for (const Run& r : kRuns) {
        if (r.pid == h.dst_id && h.vaddr >= r.vaddr && h.vaddr < r.vaddr + r.nr_pages * kPage) run = &r;
      }
      FUZZ_CHECK(run != nullptr);
      FUZZ_CHECK((run->flags & wire::PE_LAZY) && (run->flags & wire::PE_PRESENT));
      FUZZ_CHECK(h.vaddr + h.nr_pages * kPage <= run->vaddr + run->nr_pages * kPage);
      off += head;
      const uint64_t start = run->file_offset + (h.vaddr - run->vaddr);
      const uint64_t bytes = h.nr_pages * kPage;
      std::vector<uint8_t> want(bytes);
      for (uint64_t i = 0; i < bytes; i++) want[i] = run->pid == 3 ? staged_byte(start + i) : image_byte(start + i);
      for (uint64_t i = 0; i < bytes && off < out.size(); i++, off++) FUZZ_CHECK(out[off] == want[i]);
      if (checksums) {
        for (uint64_t page = 0; page < h.nr_pages && off < out.size(); page++) {
          const uint32_t crc = crc32c(want.data() + page * kPage, kPage);
          uint8_t expect[wire::kChecksumSize];
          wire::encode_checksums(&crc, 1, expect);
          for (size_t i = 0; i < wire::kChecksumSize && off < out.size(); i++, off++) FUZZ_CHECK(out[off] == expect[i]);
        }
      }
      continue;
    }
    // The CLOSE status: 4 zero bytes, the last thing ever sent.
    FUZZ_CHECK(left <= 4);
    for (size_t i = off; i < out.size(); i++) FUZZ_CHECK(out[i] == 0);
    FUZZ_CHECK(left == 4 || !clean);
    return;
  }
}

// Delivers input through the client end and drains the output, calling step() between rounds.
template <typename Session>
typename Session::Status drive(Session& session, int client, const uint8_t* data, size_t size,
                               std::vector<uint8_t>* out) {
  size_t sent = 0;
  bool shut = false;
  int idle_rounds = 0;
  typename Session::Status status = Session::Status::kOpen;
  while (status == Session::Status::kOpen) {
    bool progress = false;
    if (sent < size) {
      const size_t chunk = std::min<size_t>(size - sent, 1 + (size * 7 + sent) % 3000);
      ssize_t n = send(client, data + sent, chunk, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
        progress = true;
      }
    } else if (!shut) {
      shutdown(client, SHUT_WR);
      shut = true;
      progress = true;
    }
    if (session.wants_write()) {
      status = session.on_writable();
      progress = true;
    }
    if (status == Session::Status::kOpen && session.wants_read()) status = session.on_readable();
    uint8_t buf[65536];
    for (;;) {
      ssize_t n = recv(client, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      out->insert(out->end(), buf, buf + n);
      progress = true;
    }
    if (!progress && shut) {
      // All input delivered, nothing to send and nothing read: the session must be able to end by itself
      // (it has seen EOF). A few idle rounds are fine (on_readable sees EOF on the next call).
      FUZZ_CHECK(++idle_rounds < 16);
    } else {
      idle_rounds = 0;
    }
  }
  for (;;) {
    uint8_t buf[65536];
    ssize_t n = recv(client, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    out->insert(out->end(), buf, buf + n);
  }
  return status;
}

bool is_upload_command(uint32_t command) {
  switch (command) {
    case wire::PS_IOV_OPEN:
    case wire::PS_IOV_OPEN2:
    case wire::PS_IOV_PARENT:
    case wire::PS_IOV_ADD:
    case wire::PS_IOV_ADD_F:
    case wire::PS_IOV_HOLE:
      return true;
    default:
      return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Checkpoint* checkpoint = make_checkpoint();
  int sv[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  const int server = sv[0], client = sv[1];
  std::vector<uint8_t> out;
  const uint32_t command = size >= 4 ? static_cast<uint32_t>(load(data, 4)) & wire::PS_CMD_MASK : 0;

  if (is_upload_command(command)) {
    auto budget = std::make_shared<MemoryBudget>(4ull << 20);
    MemfdStoreOptions options;
    options.limits.budget = budget;
    options.limits.max_entry_pages = 512;
    options.grow_step = 64 * 1024;
    auto store = std::make_unique<MemfdStore>(options);
    FUZZ_CHECK(store->init_error() == 0);
    UploadLimits limits;
    limits.max_entry_pages = 512;
    UploadSession session(server, std::move(store), limits);
    UploadSession::Status status = drive(session, client, data, size, &out);
    for (uint8_t byte : out) FUZZ_CHECK(byte == 0);  // OPEN2 / PARENT / CLOSE statuses
    FUZZ_CHECK(budget->used() <= budget->limit());
    if (status == UploadSession::Status::kDone) {
      FUZZ_CHECK(session.committed());
      std::shared_ptr<PageStore> committed = session.take_store();
      FUZZ_CHECK(committed && committed->sealed());
      FUZZ_CHECK(committed->bytes_held() <= budget->used());
    } else {
      FUZZ_CHECK(!session.error().empty());
    }
  } else {
    SessionLimits limits;
    limits.max_request_pages = kMaxRequestPages;
    limits.max_queued_replies = 4;
    limits.max_queued_bytes = 64 * 1024;
    LazySession session(server, *checkpoint->index, limits, checkpoint);
    LazySession::Status status = drive(session, client, data, size, &out);
    FUZZ_CHECK(status == LazySession::Status::kDone || !session.error().empty());
    check_lazy_output(out, session.format(), status == LazySession::Status::kDone);
    FUZZ_CHECK(session.queued_bytes() <= limits.max_queued_bytes + kMaxRequestPages * kPage + wire::HEADER_SIZE_MAX);
  }
  close(client);  // the session closes server
  return 0;
}
