// The cases every PageStore must pass, for each store's test (native/tests/page_store_test.cc: the memfd store;
// bench/page-store/pipe_store_test.cc: the benchmark's pipe store): filling from sockets and pipes, lookups,
// byte-exact serving from any offset (nothing consumed), the memory cap, validation, sealing.
#pragma once

#include <arpa/inet.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <netinet/in.h>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "check.h"
#include "staging/page_store.h"

namespace lazyd::store_checks {

constexpr uint64_t kPage = 4096;

// One store configuration under test.
struct StoreKind {
  const char* name;
  std::function<std::unique_ptr<PageStore>(const StoreLimits&)> make;
  // The kernel resources of a sealed store that held fds_before fds while filling `bytes` payload bytes.
  std::function<void(PageStore& store, uint64_t fds_before, uint64_t bytes)> check_sealed_resources;
};

// Distinct bytes per (page, word) so that any misplaced byte shows.
inline std::string pattern(uint64_t first_page, uint64_t pages, uint64_t seed) {
  std::string out(pages * kPage, '\0');
  for (uint64_t p = 0; p < pages; p++) {
    for (uint64_t w = 0; w < kPage / 8; w++) {
      uint64_t z = (seed + 1) * 0x9E3779B97F4A7C15ull + (first_page + p) * 0xBF58476D1CE4E5B9ull + w * 0x94D049BB133111EBull;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z ^= z >> 31;
      memcpy(&out[p * kPage + w * 8], &z, 8);
    }
  }
  return out;
}

inline void write_all(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      poll(&p, 1, 1000);
      continue;
    }
    if (n <= 0) return;
    off += static_cast<size_t>(n);
  }
}

// Runs fn(writer_fd) while a thread reads everything from the other end of a socketpair.
inline std::string collect(const std::function<void(int)>& fn) {
  int sv[2];
  socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
  std::string got;
  std::thread reader([&] {
    char buf[65536];
    for (;;) {
      ssize_t n = read(sv[1], buf, sizeof buf);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
  });
  fn(sv[0]);
  close(sv[0]);
  reader.join();
  close(sv[1]);
  return got;
}

// A connected loopback TCP pair: out[0] server side, out[1] client side.
inline void tcp_pair(int out[2]) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a);
  listen(ls, 1);
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  out[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  connect(out[1], reinterpret_cast<sockaddr*>(&a), sizeof a);
  out[0] = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  close(ls);
}

struct Run {
  uint64_t vaddr;
  uint64_t pages;
  uint32_t flags;
};

// Fills the store from `source` (a socket or pipe end) while a thread writes `data` into `sink`.
inline void fill(PageStore& store, PageKey key, const std::vector<Run>& runs, const std::string& data, int source,
          int sink) {
  std::thread writer([&] { write_all(sink, data); });
  for (const Run& run : runs) CHECK(store.append(key, run.vaddr, run.pages, run.flags, source) == 0);
  writer.join();
}

// The runs used by most tests: pages at odd places, holes, lazy-only entries, a long run crossing pipes.
inline const std::vector<Run> kRuns = {
    {0x10000, 1, wire::PE_PRESENT},
    {0x12000, 3, wire::PE_PRESENT | wire::PE_LAZY},
    {0x20000, 5, wire::PE_LAZY},  // no data
    {0x30000, 300, wire::PE_PRESENT | wire::PE_LAZY},
    {0x200000, 2, wire::PE_PARENT},  // no data
    {0x300000, 17, wire::PE_PRESENT},
    {0x400000, 600, wire::PE_PRESENT | wire::PE_LAZY},
};

inline uint64_t data_pages(const std::vector<Run>& runs) {
  uint64_t n = 0;
  for (const Run& r : runs) n += (r.flags & wire::PE_PRESENT) ? r.pages : 0;
  return n;
}

// Checks that every present page, single and in runs of assorted lengths from assorted starts, serves back
// byte-exactly, clamped at its entry's end, any number of times.
inline void check_serving(const PageStore& store, PageKey key, const std::vector<Run>& runs, const std::string& data) {
  uint64_t stream = 0;
  for (const Run& run : runs) {
    if (!(run.flags & wire::PE_PRESENT)) continue;
    const uint64_t lens[] = {1, 2, 3, 16, 64, 257, 1000};
    for (uint64_t first = 0; first < run.pages; first += (run.pages > 40 ? 13 : 1)) {
      for (uint64_t len : lens) {
        const uint64_t want = std::min(len, run.pages - first);
        int64_t served = -1;
        std::string got = collect([&](int fd) { served = store.serve(key, run.vaddr + first * kPage, len, fd); });
        CHECK(served == static_cast<int64_t>(want));
        CHECK(got.size() == want * kPage);
        if (got != data.substr(stream + first * kPage, want * kPage)) {
          size_t i = 0;
          while (got[i] == data[stream + first * kPage + i]) i++;
          fprintf(stderr, "run 0x%llx first %llu len %llu: first difference at byte %zu\n",
                  (unsigned long long)run.vaddr, (unsigned long long)first, (unsigned long long)len, i);
          size_t where = data.find(got.substr(i, 64));
          fprintf(stderr, "got size %zu; bytes at %zu found in data at %zu (expected %llu)\n", got.size(), i, where, (unsigned long long)(stream + first * kPage + i));
        }
        CHECK(got == data.substr(stream + first * kPage, want * kPage));
      }
    }
    stream += run.pages * kPage;
  }
  CHECK(stream == data.size());
}

inline void check_metadata(const PageStore& store, PageKey key, const std::vector<Run>& runs) {
  const std::vector<StoreEntry>* entries = store.entries(key);
  CHECK(entries != nullptr);
  CHECK(entries->size() == runs.size());
  for (size_t i = 0; i < runs.size(); i++) {
    CHECK((*entries)[i].vaddr == runs[i].vaddr);
    CHECK((*entries)[i].nr_pages == runs[i].pages);
    CHECK((*entries)[i].flags == runs[i].flags);
  }
  StoreSpan span;
  CHECK(store.lookup(pid_key(999), runs[0].vaddr, 1, &span) == LookupResult::kUnknownPid);
  CHECK(store.lookup(key, 0x1000, 1, &span) == LookupResult::kNotDumped);
  CHECK(store.lookup(key, 0x11000, 1, &span) == LookupResult::kNotDumped);  // between entries
  CHECK(store.lookup(key, 0x20000 + 4 * kPage, 1, &span) == LookupResult::kNoData);
  CHECK(store.lookup(key, 0x200000, 1, &span) == LookupResult::kNoData);
  CHECK(store.lookup(key, 0x300000, 1, &span, true) == LookupResult::kNotLazy);
  CHECK(store.lookup(key, 0x12000 + kPage, 100, &span) == LookupResult::kFound);
  CHECK(span.nr_pages == 2);  // clamped to the entry
  CHECK(span.flags == (wire::PE_PRESENT | wire::PE_LAZY));
  CHECK(span.bytes == 2 * kPage);
  CHECK(store.serve(pid_key(999), 0x10000, 1, -1) == -ENOENT);
  CHECK(store.serve(key, 0x20000, 1, -1) == -ENODATA);
}

inline void test_fill_from_socketpair(const StoreKind& kind) {
  auto store = kind.make(StoreLimits());
  const std::string data = pattern(0, data_pages(kRuns), 1);
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  fill(*store, pid_key(7), kRuns, data, sv[0], sv[1]);
  close(sv[0]);
  close(sv[1]);
  CHECK(store->bytes_held() == data.size());
  CHECK(store->bytes_reserved() == data.size());
  CHECK(store->entry_count() == kRuns.size());
  check_metadata(*store, pid_key(7), kRuns);
  check_serving(*store, pid_key(7), kRuns, data);  // before sealing too
  const uint64_t fds_before = store->resources().fds;
  CHECK(store->seal() == 0);
  CHECK(store->sealed());
  check_serving(*store, pid_key(7), kRuns, data);
  CHECK(store->append(pid_key(7), 0x900000, 1, wire::PE_PRESENT, -1) == kStoreSealed);
  kind.check_sealed_resources(*store, fds_before, data.size());
  printf("  %-13s socketpair fill: %zu bytes, %llu fds sealed, serving exact\n", kind.name, data.size(),
         static_cast<unsigned long long>(store->resources().fds));
}

// Loopback TCP hands the pipe buffers of up to 32 KiB (page fragments), so pages straddle buffers and pipes.
inline void test_fill_from_tcp(const StoreKind& kind) {
  auto store = kind.make(StoreLimits());
  const std::string data = pattern(100, data_pages(kRuns), 2);
  int tp[2];
  tcp_pair(tp);
  fcntl(tp[0], F_SETFL, O_NONBLOCK);  // append() then waits in poll between pieces
  fill(*store, pid_key(8), kRuns, data, tp[0], tp[1]);
  close(tp[0]);
  close(tp[1]);
  CHECK(store->seal() == 0);
  check_metadata(*store, pid_key(8), kRuns);
  check_serving(*store, pid_key(8), kRuns, data);
  printf("  %-13s tcp fill: %llu pipes\n", kind.name, static_cast<unsigned long long>(store->resources().pipes));
}

// A pipe source (write() makes one buffer per page) and bytes from memory.
inline void test_fill_from_pipe_and_memory(const StoreKind& kind) {
  auto store = kind.make(StoreLimits());
  const std::string data = pattern(200, data_pages(kRuns), 3);
  int p[2];
  CHECK(pipe2(p, O_CLOEXEC) == 0);
  // Half the entries from the pipe, the others from memory in odd-sized pieces.
  std::thread writer([&] {
    uint64_t stream = 0;
    for (size_t i = 0; i < kRuns.size(); i++) {
      if (!(kRuns[i].flags & wire::PE_PRESENT)) continue;
      if (i % 2 == 0) write_all(p[1], data.substr(stream, kRuns[i].pages * kPage));
      stream += kRuns[i].pages * kPage;
    }
  });
  uint64_t stream = 0;
  for (size_t i = 0; i < kRuns.size(); i++) {
    const Run& run = kRuns[i];
    const uint64_t bytes = (run.flags & wire::PE_PRESENT) ? run.pages * kPage : 0;
    if (i % 2 == 0 || bytes == 0) {
      CHECK(store->append(pid_key(9), run.vaddr, run.pages, run.flags, p[0]) == 0);
    } else {
      CHECK(store->begin_entry(pid_key(9), run.vaddr, run.pages, run.flags) == 0);
      uint64_t off = 0;
      while (off < bytes) {
        const size_t piece = std::min<uint64_t>(bytes - off, 1000 + off % 7777);
        ssize_t n = store->receive_bytes(data.data() + stream + off, piece);
        CHECK(n > 0);
        off += static_cast<uint64_t>(n);
      }
      CHECK(store->pending_bytes() == 0);
    }
    stream += bytes;
  }
  writer.join();
  close(p[0]);
  close(p[1]);
  CHECK(store->seal() == 0);
  check_metadata(*store, pid_key(9), kRuns);
  check_serving(*store, pid_key(9), kRuns, data);
}

// Serving must not consume: the same pages many times, interleaved, and to a regular file.
inline void test_serve_repeatedly(const StoreKind& kind) {
  auto store = kind.make(StoreLimits());
  const uint64_t pages = 700;
  const std::string data = pattern(300, pages, 4);
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  fill(*store, shmem_key(5), {{0, pages, wire::PE_PRESENT}}, data, sv[0], sv[1]);
  close(sv[0]);
  close(sv[1]);
  CHECK(store->seal() == 0);
  for (int round = 0; round < 50; round++) {
    const uint64_t page = (round * 97) % pages;
    std::string got = collect([&](int fd) { CHECK(store->serve(shmem_key(5), page * kPage, 1, fd) == 1); });
    CHECK(got == data.substr(page * kPage, kPage));
  }
  std::string all = collect([&](int fd) { CHECK(store->serve(shmem_key(5), 0, pages, fd) == static_cast<int64_t>(pages)); });
  CHECK(all == data);
  // To a regular file (writing pages images from a staged store).
  FILE* tmp = tmpfile();
  CHECK(tmp != nullptr);
  CHECK(store->serve(shmem_key(5), 10 * kPage, 100, fileno(tmp)) == 100);
  std::string file(100 * kPage, '\0');
  CHECK(pread(fileno(tmp), &file[0], file.size(), 0) == static_cast<ssize_t>(file.size()));
  CHECK(file == data.substr(10 * kPage, 100 * kPage));
  fclose(tmp);
  // Non-blocking send() to a full socket: EAGAIN, then the rest once drained, nothing lost or repeated.
  int nb[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, nb) == 0);
  int small = 4096;
  setsockopt(nb[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  StoreSpan span;
  CHECK(store->lookup(shmem_key(5), 3 * kPage, 600, &span) == LookupResult::kFound);
  ServeScratch scratch;
  uint64_t done = 0;
  std::string got;
  int eagains = 0;
  while (done < span.bytes) {
    ssize_t n = store->send(span, done, nb[0], scratch);
    if (n == -EAGAIN) {
      eagains++;
      char buf[65536];
      ssize_t r = read(nb[1], buf, sizeof buf);
      CHECK(r > 0);
      got.append(buf, static_cast<size_t>(r));
      continue;
    }
    CHECK(n > 0);
    done += static_cast<uint64_t>(n);
  }
  for (;;) {
    char buf[65536];
    ssize_t r = read(nb[1], buf, sizeof buf);
    if (r <= 0) break;
    got.append(buf, static_cast<size_t>(r));
  }
  CHECK(eagains > 0);
  CHECK(scratch.pending() == 0);
  CHECK(got == data.substr(3 * kPage, 600 * kPage));
  close(nb[0]);
  close(nb[1]);
}

inline void test_cap(const StoreKind& kind) {
  // A budget shared by two stores: 1 MiB in all.
  StoreLimits limits;
  limits.budget = std::make_shared<MemoryBudget>(1 << 20);
  {
    auto a = kind.make(limits);
    auto b = kind.make(limits);
    const std::string half = pattern(0, 128, 6);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    fill(*a, pid_key(1), {{0, 128, wire::PE_PRESENT}}, half, sv[0], sv[1]);
    CHECK(limits.budget->used() == 512 * 1024);
    // Entries without data cost nothing.
    CHECK(b->begin_entry(pid_key(2), 0, 100000, wire::PE_LAZY) == 0);
    CHECK(b->begin_entry(pid_key(2), 1 << 30, 129, wire::PE_PRESENT) == kStoreCapExceeded);
    CHECK(b->pending_bytes() == 0);
    fill(*b, pid_key(2), {{1 << 30, 128, wire::PE_PRESENT}}, half, sv[0], sv[1]);
    CHECK(limits.budget->used() == 1 << 20);
    CHECK(a->begin_entry(pid_key(1), 1 << 30, 1, wire::PE_PRESENT) == kStoreCapExceeded);
    CHECK(std::string(store_error_text(kStoreCapExceeded)).find("cap") != std::string::npos);
    b.reset();
    CHECK(limits.budget->used() == 512 * 1024);  // dropping a store releases its bytes
    close(sv[0]);
    close(sv[1]);
  }
  CHECK(limits.budget->used() == 0);
  // A store's own budget (max_bytes).
  StoreLimits own;
  own.max_bytes = 3 * kPage;
  auto c = kind.make(own);
  CHECK(c->begin_entry(pid_key(1), 0, 4, wire::PE_PRESENT) == kStoreCapExceeded);
  CHECK(c->begin_entry(pid_key(1), 0, 3, wire::PE_PRESENT) == 0);
  CHECK(c->begin_entry(pid_key(1), 0x10000, 1, wire::PE_PRESENT) == kStoreBusy);  // payload still expected
}

inline void test_validation(const StoreKind& kind) {
  StoreLimits limits;
  limits.max_entry_pages = 1000;
  auto s = kind.make(limits);
  CHECK(s->begin_entry(pid_key(1), 0x1001, 1, wire::PE_PRESENT) == kStoreBadEntry);
  CHECK(s->begin_entry(pid_key(1), 0x1000, 0, wire::PE_PRESENT) == kStoreBadEntry);
  CHECK(s->begin_entry(pid_key(1), 0x1000, 1001, wire::PE_PRESENT) == kStoreTooBig);
  CHECK(s->begin_entry(pid_key(1), 0x1000, 1, 0) == kStoreBadEntry);
  CHECK(s->begin_entry(pid_key(1), 0x1000, 1, 8) == kStoreBadEntry);
  CHECK(s->begin_entry(pid_key(1), 0x1000, 1, wire::PE_PARENT | wire::PE_PRESENT) == kStoreBadEntry);
  CHECK(s->begin_entry(pid_key(1), 0xfffffffffffff000ull, 2, wire::PE_LAZY) == kStoreBadEntry);  // wraps
  CHECK(s->receive_bytes("x", 1) == kStoreBusy);  // nothing expected
  CHECK(s->begin_entry(pid_key(1), 0x10000, 4, wire::PE_LAZY) == 0);
  CHECK(s->begin_entry(pid_key(1), 0x12000, 1, wire::PE_LAZY) == kStoreOutOfOrder);  // overlaps
  CHECK(s->begin_entry(pid_key(1), 0x8000, 1, wire::PE_LAZY) == kStoreOutOfOrder);   // goes back
  CHECK(s->begin_entry(pid_key(1), 0x14000, 1, wire::PE_LAZY) == 0);                 // adjacent is fine
  CHECK(s->begin_entry(pid_key(2), 0x1000, 1, wire::PE_LAZY) == 0);                  // other key: own order
  CHECK(s->open_key(shmem_key(3)) == 0);
  CHECK(s->keys().size() == 3);
  CHECK(s->keys()[0] == pid_key(1) && s->keys()[1] == pid_key(2) && s->keys()[2] == shmem_key(3));
  CHECK(s->entries(shmem_key(3))->empty());
  CHECK(s->bytes_reserved() == 0);
  // A truncated source.
  int p[2];
  CHECK(pipe2(p, O_CLOEXEC) == 0);
  write_all(p[1], std::string(kPage + 100, 'x'));
  close(p[1]);
  CHECK(s->append(pid_key(2), 0x10000, 2, wire::PE_PRESENT, p[0]) == kStoreTruncated);
  CHECK(s->pending_bytes() == kPage - 100);
  CHECK(s->entries(pid_key(2))->size() == 1);  // the incomplete entry is not visible
  StoreSpan span;
  CHECK(s->lookup(pid_key(2), 0x10000, 1, &span) == LookupResult::kNotDumped);
  CHECK(s->seal() == kStoreBusy);
  close(p[0]);
}

// Every case above, for one store configuration.
inline void run_store_cases(const StoreKind& kind) {
  test_fill_from_socketpair(kind);
  test_fill_from_tcp(kind);
  test_fill_from_pipe_and_memory(kind);
  test_serve_repeatedly(kind);
  test_cap(kind);
  test_validation(kind);
}

}  // namespace lazyd::store_checks
