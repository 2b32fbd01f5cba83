// Micro-benchmark of the staging page stores (pipe_store here, native/core/staging/memfd_store): the cost of
// serving one GET (4 KiB, 64 KiB, 1 MiB) from various positions of a 6 MiB stored run, to three sinks, and the
// append throughput from a socket. Build and run with bench/page-store/run.sh.
//
// GET cost = wall time of a loop of store.send() calls over the whole reply, divided by the number of GETs,
// while the sink is drained:
//   null  a pipe drained in the same thread with splice to /dev/null (the store's own cost, no socket)
//   unix  an AF_UNIX socketpair, drained by a reader thread (other vCPU)
//   tcp   loopback TCP, drained by a reader thread (other vCPU)
// Pipe stores are filled from a source with one buffer per 4 KiB page (like write() or a NIC with page-sized
// fragments: the realistic worst case for tee, which pays per pipe buffer) or from loopback TCP (up to 32 KiB
// per buffer).
#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include "pipe_store.h"
#include "staging/memfd_store.h"

using namespace lazyd;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kVaddr = 0x7f0000000000ull;
constexpr uint64_t kRunPages = 6 * 256;  // 6 MiB

double quick = 1.0;  // --quick scales the iteration counts down
std::string filter;  // --store SUBSTR: only the GET configurations whose name contains it

void die(const char* what) {
  perror(what);
  exit(1);
}

void tcp_pair(int out[2]) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) || listen(ls, 1)) die("listen");
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  out[1] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (connect(out[1], reinterpret_cast<sockaddr*>(&a), sizeof a)) die("connect");
  out[0] = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  close(ls);
  int one = 1;
  setsockopt(out[0], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void write_all(int fd, const char* data, size_t len) {
  while (len) {
    ssize_t n = write(fd, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    len -= static_cast<size_t>(n);
  }
}

// ---------------------------------------------------------------- GET cost

enum class Fill { kPageBuffers, kTcp };

struct StoreConfig {
  std::string name;
  bool memfd;
  uint64_t pipe_bytes;
  uint64_t copy_max;  // memfd: replies up to this size by send() from the mapping
  Fill fill;
};

// A memfd store (its options set by `tune_memfd`) or a pipe store of `pipe_bytes` per pipe; both capped at 16 GiB,
// far above what a run stores: the benchmark measures cost, not limits.
template <typename TuneMemfd>
std::unique_ptr<PageStore> new_store(bool memfd, uint64_t pipe_bytes, TuneMemfd tune_memfd) {
  if (memfd) {
    MemfdStoreOptions o;
    o.limits.max_bytes = 1ull << 34;
    tune_memfd(o);
    return std::make_unique<MemfdStore>(o);
  }
  PipeStoreOptions o;
  o.limits.max_bytes = 1ull << 34;
  o.pipe_bytes = pipe_bytes;
  return std::make_unique<PipeStore>(o);
}

std::unique_ptr<PageStore> build(const StoreConfig& c, const std::string& data) {
  std::unique_ptr<PageStore> store = new_store(c.memfd, c.pipe_bytes, [&](MemfdStoreOptions& o) { o.copy_max = c.copy_max; });
  int fds[2];
  if (c.fill == Fill::kTcp) {
    tcp_pair(fds);
  } else {
    if (pipe2(fds, O_CLOEXEC)) die("pipe");  // fds[0] the source (one buffer per written page), fds[1] written
  }
  std::thread writer([&] { write_all(fds[1], data.data(), data.size()); });
  int err = store->append(pid_key(1), kVaddr, data.size() / kPage, wire::PE_PRESENT | wire::PE_LAZY, fds[0]);
  writer.join();
  close(fds[0]);
  close(fds[1]);
  if (err || store->seal()) {
    fprintf(stderr, "filling %s failed: %s\n", c.name.c_str(), store_error_text(err));
    exit(1);
  }
  return store;
}

enum class Sink { kNull, kUnix, kTcp };
const char* sink_name(Sink s) { return s == Sink::kNull ? "null" : s == Sink::kUnix ? "unix" : "tcp"; }

struct SinkPair {
  int out = -1;
  int in = -1;
  int devnull = -1;
  std::thread reader;
  std::atomic<bool> stop{false};

  explicit SinkPair(Sink s) {
    int fds[2];
    if (s == Sink::kNull) {
      if (pipe2(fds, O_CLOEXEC)) die("pipe");
      fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
      in = fds[0];
      out = fds[1];
      devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
      return;
    }
    if (s == Sink::kUnix) {
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)) die("socketpair");
    } else {
      tcp_pair(fds);
    }
    out = fds[0];
    in = fds[1];
    reader = std::thread([this] {
      std::vector<char> buf(1 << 20);
      while (read(in, buf.data(), buf.size()) > 0) {
      }
    });
  }
  // In null mode, empties the pipe after each GET (part of the measured cost: one splice).
  void drain(uint64_t bytes) {
    if (devnull < 0) return;
    while (bytes) {
      ssize_t n = splice(in, nullptr, devnull, nullptr, bytes, 0);
      if (n <= 0) die("drain");
      bytes -= static_cast<uint64_t>(n);
    }
  }
  ~SinkPair() {
    shutdown(out, SHUT_WR);
    close(out);
    if (reader.joinable()) reader.join();
    close(in);
    if (devnull >= 0) close(devnull);
  }
};

// Returns microseconds per GET (median of 3).
double time_gets(const PageStore& store, Sink sink, uint64_t offset, uint64_t pages) {
  const uint64_t bytes = pages * kPage;
  const int iterations = std::max(20, static_cast<int>(quick * (pages == 1 ? 10000 : pages == 16 ? 2000 : 150)));
  SinkPair pair(sink);
  ServeScratch scratch;
  StoreSpan span;
  if (store.lookup(pid_key(1), kVaddr + offset, pages, &span) != LookupResult::kFound || span.bytes != bytes) {
    fprintf(stderr, "lookup failed at offset %llu\n", static_cast<unsigned long long>(offset));
    exit(1);
  }
  std::vector<double> samples;
  for (int rep = 0; rep < 3; rep++) {
    auto start = Clock::now();
    for (int i = 0; i < iterations; i++) {
      uint64_t done = 0;
      while (done < bytes) {
        ssize_t n = store.send(span, done, pair.out, scratch);
        if (n > 0) {
          done += static_cast<uint64_t>(n);
          if (sink == Sink::kNull) pair.drain(static_cast<uint64_t>(n));
          continue;
        }
        if (n == -EAGAIN) {
          pollfd p{pair.out, POLLOUT, 0};
          poll(&p, 1, -1);
          continue;
        }
        fprintf(stderr, "send: %s\n", strerror(static_cast<int>(-n)));
        exit(1);
      }
    }
    samples.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations);
  }
  std::sort(samples.begin(), samples.end());
  return samples[1];
}

void bench_gets(const std::vector<StoreConfig>& configs, const std::vector<Sink>& sinks) {
  const std::string data = [] {
    std::string d(kRunPages * kPage, '\0');
    for (size_t i = 0; i < d.size(); i += 8) {
      uint64_t v = i * 0x9E3779B97F4A7C15ull;
      memcpy(&d[i], &v, 8);
    }
    return d;
  }();
  // Pipe heads (64K, 512K, 1M, 4M are multiples of every pipe size up to their own) and the last page of a
  // 64K, 256K, 1M and 4M pipe (60K, 252K, 1020K, 4092K): the best and the worst place of a page in its pipe.
  const uint64_t offsets[] = {0, 60 << 10, 64 << 10, 252 << 10, 512 << 10, 1020 << 10, 1 << 20, 4092 << 10, 4 << 20};
  const uint64_t sizes[] = {1, 16, 256};
  printf("\nGET cost, microseconds per GET (median of 3 runs), by position of the first page in the stored run\n");
  printf("%-26s %-5s %-6s", "store", "sink", "size");
  for (uint64_t off : offsets) {
    const bool mib = off >= (1 << 20) && off % (1 << 20) == 0;
    printf(" %7s", (mib ? std::to_string(off >> 20) + "M" : std::to_string(off >> 10) + "K").c_str());
  }
  printf("   fds\n");
  for (const StoreConfig& c : configs) {
    auto store = build(c, data);
    for (Sink sink : sinks) {
      for (uint64_t pages : sizes) {
        printf("%-26s %-5s %-6s", c.name.c_str(), sink_name(sink), pages == 1 ? "4K" : pages == 16 ? "64K" : "1M");
        for (uint64_t off : offsets) printf(" %7.2f", time_gets(*store, sink, off, pages));
        printf("   %llu\n", static_cast<unsigned long long>(store->resources().fds));
        fflush(stdout);
      }
    }
  }
}

// ---------------------------------------------------------------- raw: how to drop the leading bytes

void bench_discard() {
  // One 1 MiB pipe of 4 KiB buffers; serve the page at offset X: tee X+4K, drop X, splice 4K out.
  int src[2], scratch[2], sink[2];
  if (pipe2(src, O_CLOEXEC) || pipe2(scratch, O_CLOEXEC) || pipe2(sink, O_CLOEXEC)) die("pipe");
  const int size = std::min<size_t>(pipe_max_size(), 1 << 20);
  fcntl(src[1], F_SETPIPE_SZ, size);
  fcntl(scratch[1], F_SETPIPE_SZ, size);
  std::vector<char> page(kPage, 'x');
  for (int i = 0; i < size / static_cast<int>(kPage); i++) write_all(src[1], page.data(), kPage);
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  std::vector<char> junk(size);
  printf("\nDropping the leading bytes after tee (one %d KiB pipe of 4 KiB buffers), microseconds per 4 KiB GET\n",
         size >> 10);
  printf("%-28s", "method");
  const uint64_t offsets[] = {0, 16 << 10, 64 << 10, 256 << 10, 512 << 10, 1020 << 10};
  for (uint64_t off : offsets) printf(" %8lluK", static_cast<unsigned long long>(off >> 10));
  printf("\n");
  for (int method = 0; method < 2; method++) {
    printf("%-28s", method == 0 ? "tee + splice to /dev/null" : "tee + read() into a buffer");
    for (uint64_t off : offsets) {
      if (off + kPage > static_cast<uint64_t>(size)) {
        printf(" %9s", "-");
        continue;
      }
      const int iterations = std::max(50, static_cast<int>(quick * 5000));
      auto start = Clock::now();
      for (int i = 0; i < iterations; i++) {
        if (tee(src[0], scratch[1], off + kPage, 0) != static_cast<ssize_t>(off + kPage)) die("tee");
        if (off) {
          if (method == 0) {
            if (splice(scratch[0], nullptr, devnull, nullptr, off, 0) != static_cast<ssize_t>(off)) die("splice");
          } else {
            uint64_t left = off;
            while (left) left -= static_cast<uint64_t>(read(scratch[0], junk.data(), left));
          }
        }
        if (splice(scratch[0], nullptr, sink[1], nullptr, kPage, 0) != static_cast<ssize_t>(kPage)) die("splice");
        if (splice(sink[0], nullptr, devnull, nullptr, kPage, 0) != static_cast<ssize_t>(kPage)) die("drain");
      }
      printf(" %9.2f", std::chrono::duration<double, std::micro>(Clock::now() - start).count() / iterations);
    }
    printf("\n");
  }
  close(devnull);
  for (int fd : {src[0], src[1], scratch[0], scratch[1], sink[0], sink[1]}) close(fd);
}

// ---------------------------------------------------------------- append throughput

struct AppendConfig {
  std::string name;
  bool memfd;
  uint64_t pipe_bytes;
  MemfdStoreOptions::Fill fill;
};

void bench_append(const std::vector<AppendConfig>& configs, uint64_t total_mib) {
  printf("\nAppend from a socket: %llu MiB per run, as entries of the given size (payload only, no headers)\n",
         static_cast<unsigned long long>(total_mib));
  printf("%-26s %-5s %-7s %10s %8s %8s\n", "store", "src", "entry", "MB/s", "pipes", "fds");
  const uint64_t total = total_mib << 20;
  std::vector<char> chunk(1 << 20);
  for (size_t i = 0; i < chunk.size(); i++) chunk[i] = static_cast<char>(i * 131);
  for (const AppendConfig& c : configs) {
    for (int src = 0; src < 2; src++) {
      for (uint64_t entry_pages : {16ull, 256ull}) {
        std::unique_ptr<PageStore> store = new_store(c.memfd, c.pipe_bytes, [&](MemfdStoreOptions& o) { o.fill = c.fill; });
        int fds[2];
        if (src == 0) {
          tcp_pair(fds);
        } else if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)) {
          die("socketpair");
        }
        fcntl(fds[0], F_SETFL, O_NONBLOCK);  // as in an upload session
        auto start = Clock::now();
        std::thread writer([&] {
          for (uint64_t sent = 0; sent < total; sent += chunk.size()) write_all(fds[1], chunk.data(), chunk.size());
        });
        uint64_t vaddr = kVaddr;
        for (uint64_t got = 0; got < total; got += entry_pages * kPage) {
          int err = store->append(pid_key(1), vaddr, entry_pages, wire::PE_PRESENT, fds[0]);
          if (err) {
            fprintf(stderr, "append: %s\n", store_error_text(err));
            exit(1);
          }
          vaddr += entry_pages * kPage;
        }
        writer.join();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        const StoreResources r = store->resources();
        printf("%-26s %-5s %-7s %10.0f %8llu %8llu\n", c.name.c_str(), src == 0 ? "tcp" : "unix",
               entry_pages == 16 ? "64K" : "1M", total / seconds / 1e6, static_cast<unsigned long long>(r.pipes),
               static_cast<unsigned long long>(r.fds));
        fflush(stdout);
        close(fds[0]);
        close(fds[1]);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool only_gets = false, only_append = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) quick = 0.1;
    if (!strcmp(argv[i], "--gets")) only_gets = true;
    if (!strcmp(argv[i], "--append")) only_append = true;
    if (!strcmp(argv[i], "--store") && i + 1 < argc) filter = argv[++i];
  }
  rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  const size_t max = pipe_max_size();
  char host[256] = "";
  gethostname(host, sizeof host);
  printf("page-store bench: fs.pipe-max-size %zu, %ld CPUs, RLIMIT_NOFILE %llu\n", max, sysconf(_SC_NPROCESSORS_ONLN),
         static_cast<unsigned long long>(rl.rlim_cur));

  if (!only_append) {
    std::vector<StoreConfig> configs = {
        {"memfd sendfile", true, 0, 0, Fill::kPageBuffers},
        {"memfd copy (send)", true, 0, UINT64_MAX, Fill::kPageBuffers},
        {"pipe 64K, 4K bufs", false, 64 << 10, 0, Fill::kPageBuffers},
        {"pipe 256K, 4K bufs", false, 256 << 10, 0, Fill::kPageBuffers},
        {"pipe 1M, 4K bufs", false, 1 << 20, 0, Fill::kPageBuffers},
    };
    if (max >= (4u << 20)) configs.push_back({"pipe 4M, 4K bufs (CRIU)", false, 4 << 20, 0, Fill::kPageBuffers});
    configs.push_back({"pipe 256K, tcp bufs", false, 256 << 10, 0, Fill::kTcp});
    configs.push_back({"pipe 1M, tcp bufs", false, 1 << 20, 0, Fill::kTcp});
    if (!filter.empty()) {
      std::vector<StoreConfig> kept;
      for (const StoreConfig& c : configs) if (c.name.find(filter) != std::string::npos) kept.push_back(c);
      configs = kept;
    }
    bench_gets(configs, {Sink::kNull, Sink::kUnix, Sink::kTcp});
    bench_discard();
  }
  if (!only_gets) {
    bench_append({{"pipe 256K (splice)", false, 256 << 10, MemfdStoreOptions::Fill::kRead},
                  {"pipe 1M (splice)", false, 1 << 20, MemfdStoreOptions::Fill::kRead},
                  {"memfd read() into map", true, 0, MemfdStoreOptions::Fill::kRead},
                  {"memfd splice via pipe", true, 0, MemfdStoreOptions::Fill::kSplice}},
                 quick < 1 ? 64 : 512);
  }
  return 0;
}
