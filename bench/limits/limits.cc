// What this machine allows, measured the same way every run, so the migration figures can be read as a fraction of
// it (bench/limits.ts runs it). Each mode prints one JSON object on stdout.
//
//   limits memcpy [MiB]            single-thread memcpy between two warmed buffers: GB/s (best of 5)
//   limits uffd [MiB]              userfaultfd round trip from local memory: one thread touches every page of a
//                                  registered (missing) area in order, a handler thread answers each fault with
//                                  UFFDIO_COPY of 4 KiB from a local buffer; µs per fault (p50/p99/mean) and MB/s
//   limits uffd-bulk [MiB] [KiB]  the drain's install path alone: UFFDIO_COPY of KiB (1024) at a time into a
//                                  registered area nothing touches (no fault, no wake): MB/s, best of 3
//   limits fresh-touch [MiB] [S]   first writes to new anonymous memory, 4 KiB at a time (what UFFDIO_COPY does to
//                                  each page it installs): an area written once, freed, written again at once, and
//                                  again after S (10) seconds: MB/s of each (not run by bench/limits.ts)
//   limits tcp-server PORT         serves one client at a time: 'P' = echo 1-byte pings, 'B' = sink bytes to EOF,
//                                  'U' = install what it receives (tcp-uffd-client)
//   limits tcp-client ADDR PORT S  200 one-byte round trips (RTT p50/p99), then S seconds of one TCP stream: MB/s
//   limits tcp-uffd-client ADDR PORT MiB [THREADS]
//                                  a post-copy stream at its simplest: MiB sent in one TCP stream, and the server
//                                  ('U') receives each MiB and installs it with UFFDIO_COPY into a registered area,
//                                  on one thread as a lazy-pages daemon does; THREADS 2 ('W'): one thread receives,
//                                  another installs. MB/s until the last page is in
//
// Build: g++ -O2 -std=c++17 -pthread -o limits limits.cc
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kPage = 4096;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "limits: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(q * v.size()));
  return v[i];
}

int memcpy_mode(size_t mib) {
  size_t bytes = mib << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  double best = 1e9;
  for (int i = 0; i < 5; i++) {
    double t = now_s();
    std::memcpy(b.data(), a.data(), bytes);
    double dt = now_s() - t;
    best = std::min(best, dt);
    a[i] = b[bytes - 1 - i];  // keep the copies observable
  }
  std::printf("{\"mode\":\"memcpy\",\"bytes\":%zu,\"GBs\":%.3f}\n", bytes, bytes / best / 1e9);
  return 0;
}

struct UffdShared {
  int uffd;
  char* src;
  std::atomic<bool> stop{false};
};

void* uffd_handler(void* arg) {
  auto* s = static_cast<UffdShared*>(arg);
  while (!s->stop.load()) {
    pollfd p{s->uffd, POLLIN, 0};
    int n = poll(&p, 1, 100);
    if (n <= 0) continue;
    uffd_msg msg;
    if (read(s->uffd, &msg, sizeof msg) != sizeof msg) continue;
    if (msg.event != UFFD_EVENT_PAGEFAULT) continue;
    uffdio_copy copy{};
    copy.dst = msg.arg.pagefault.address & ~(kPage - 1);
    copy.src = reinterpret_cast<unsigned long>(s->src);
    copy.len = kPage;
    if (ioctl(s->uffd, UFFDIO_COPY, &copy) < 0 && errno != EEXIST) die("UFFDIO_COPY");
  }
  return nullptr;
}

// A userfaultfd with `bytes` of fresh anonymous memory registered for missing pages (small pages only).
int registered_area(size_t bytes, char** area) {
  int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (uffd < 0) die("userfaultfd");
  uffdio_api api{};
  api.api = UFFD_API;
  if (ioctl(uffd, UFFDIO_API, &api) < 0) die("UFFDIO_API");
  *area = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (*area == MAP_FAILED) die("mmap");
  madvise(*area, bytes, MADV_NOHUGEPAGE);
  uffdio_register reg{};
  reg.range.start = reinterpret_cast<unsigned long>(*area);
  reg.range.len = bytes;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) die("UFFDIO_REGISTER");
  return uffd;
}

// UFFDIO_COPY of len bytes from src to area + at, waking nobody (nothing faults there).
void install(int uffd, char* area, unsigned long long at, const char* src, size_t len) {
  uffdio_copy copy{};
  copy.dst = reinterpret_cast<unsigned long>(area) + at;
  copy.src = reinterpret_cast<unsigned long>(src);
  copy.len = len;
  copy.mode = UFFDIO_COPY_MODE_DONTWAKE;
  if (ioctl(uffd, UFFDIO_COPY, &copy) < 0) die("UFFDIO_COPY");
}

int uffd_mode(size_t mib) {
  size_t bytes = mib << 20, pages = bytes / kPage;
  char* area = nullptr;
  int uffd = registered_area(bytes, &area);
  static char src[kPage] __attribute__((aligned(4096)));
  std::memset(src, 7, sizeof src);
  UffdShared shared;
  shared.uffd = uffd;
  shared.src = src;
  pthread_t handler;
  pthread_create(&handler, nullptr, uffd_handler, &shared);
  std::vector<double> us;
  us.reserve(pages);
  unsigned long sum = 0;
  double t0 = now_s();
  for (size_t p = 0; p < pages; p++) {
    double t = now_s();
    sum += static_cast<unsigned char>(area[p * kPage]);
    us.push_back((now_s() - t) * 1e6);
  }
  double total = now_s() - t0;
  shared.stop = true;
  pthread_join(handler, nullptr);
  if (sum != 7ul * pages) {
    std::fprintf(stderr, "limits: uffd: pages read back wrong (sum %lu)\n", sum);
    return 1;
  }
  double mean = total * 1e6 / pages;
  std::printf("{\"mode\":\"uffd\",\"pages\":%zu,\"p50Us\":%.2f,\"p99Us\":%.2f,\"meanUs\":%.2f,\"MBs\":%.1f}\n", pages,
              quantile(us, 0.5), quantile(us, 0.99), mean, bytes / total / 1e6);
  return 0;
}

// The drain's install path alone: UFFDIO_COPY of `chunk_kib` at a time into a registered area that nothing touches
// (no fault, no wake), the kernel allocating and filling each page. Best of 3 fresh areas.
int uffd_bulk_mode(size_t mib, size_t chunk_kib) {
  const size_t bytes = mib << 20, chunk = std::max<size_t>(chunk_kib << 10, kPage);
  std::vector<char> src(chunk);
  for (size_t i = 0; i < chunk; i++) src[i] = static_cast<char>(i * 131 + 7);
  double best = 1e9, first = 0;
  for (int run = 0; run < 3; run++) {
    char* area = nullptr;
    int uffd = registered_area(bytes, &area);
    double t = now_s();
    for (size_t off = 0; off < bytes; off += chunk) install(uffd, area, off, src.data(), std::min(chunk, bytes - off));
    const double took = now_s() - t;
    if (run == 0) first = took;
    best = std::min(best, took);
    for (size_t off = 0; off < bytes; off += chunk) {
      if (std::memcmp(area + off, src.data(), std::min(chunk, bytes - off)) != 0) {
        std::fprintf(stderr, "limits: uffd-bulk: pages read back wrong at %zu\n", off);
        return 1;
      }
    }
    munmap(area, bytes);
    close(uffd);
  }
  // The first area takes whatever pages are free; on a VM whose free pages go back to the host (virtio-balloon
  // free page reporting) those need the host to back them again, the later areas reuse the first one's.
  std::printf("{\"mode\":\"uffd-bulk\",\"bytes\":%zu,\"chunk\":%zu,\"MBs\":%.1f,\"firstMBs\":%.1f}\n", bytes, chunk,
              bytes / best / 1e6, bytes / first / 1e6);
  return 0;
}

// First writes to new anonymous pages. On a VM whose free pages go back to the host (virtio-balloon free page
// reporting: free blocks of 2 MiB reported a few seconds after they are freed) a page the host took back costs a
// host fault on its first write; one freed a moment ago does not.
int fresh_touch_mode(size_t mib, unsigned pause_s) {
  const size_t bytes = mib << 20;
  char page[kPage];
  std::memset(page, 1, sizeof page);
  auto pass = [&]() {
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) die("mmap");
    char* area = static_cast<char*>(m);
    madvise(area, bytes, MADV_NOHUGEPAGE);  // the restore's pages are 4 KiB ones
    const double t = now_s();
    for (size_t off = 0; off < bytes; off += kPage) std::memcpy(area + off, page, kPage);
    const double took = now_s() - t;
    munmap(area, bytes);
    return bytes / took / 1e6;
  };
  const double first = pass(), again = pass();
  sleep(pause_s);
  const double after = pass();
  std::printf("{\"mode\":\"fresh-touch\",\"bytes\":%zu,\"firstMBs\":%.1f,\"againMBs\":%.1f,\"pauseS\":%u,"
              "\"afterPauseMBs\":%.1f}\n",
              bytes, first, again, pause_s, after);
  return 0;
}

void read_full(int fd, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) die("read");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void write_full(int fd, const void* buf, size_t n) {
  auto* p = static_cast<const char*>(buf);
  while (n) {
    ssize_t r = write(fd, p, n);
    if (r <= 0) die("write");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

// 'U': one thread receives each MiB and installs it, as lazyd lazy-pages does. Returns the bytes installed.
unsigned long long receive_and_install(int c, unsigned long long bytes) {
  char* area = nullptr;
  int uffd = registered_area(bytes, &area);
  std::vector<char> buf(1 << 20);
  unsigned long long total = 0;
  while (total < bytes) {
    const size_t want = static_cast<size_t>(std::min<unsigned long long>(buf.size(), bytes - total));
    read_full(c, buf.data(), want);
    install(uffd, area, total, buf.data(), want);
    total += want;
  }
  munmap(area, bytes);
  close(uffd);
  return total;
}

// 'W': a receiving thread and an installing one, handing MiB buffers over through a ring of 8.
unsigned long long receive_then_install(int c, unsigned long long bytes) {
  char* area = nullptr;
  int uffd = registered_area(bytes, &area);
  constexpr size_t kSlots = 8, kSlot = 1 << 20;
  std::vector<char> ring(kSlots * kSlot);
  std::mutex m;
  std::condition_variable cv;
  unsigned long long received = 0, installed = 0;  // bytes, under m
  std::thread installer([&] {
    for (;;) {
      unsigned long long at, ready;
      {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return received > installed || installed == bytes; });
        if (installed == bytes) return;
        at = installed;
        ready = received;
      }
      while (at < ready) {
        const size_t len = static_cast<size_t>(std::min<unsigned long long>(kSlot, ready - at));
        install(uffd, area, at, ring.data() + (at / kSlot % kSlots) * kSlot, len);
        at += len;
      }
      std::lock_guard<std::mutex> lock(m);
      installed = at;
      cv.notify_all();
    }
  });
  for (unsigned long long at = 0; at < bytes;) {
    {
      std::unique_lock<std::mutex> lock(m);
      cv.wait(lock, [&] { return at - installed < kSlots * kSlot; });
    }
    const size_t len = static_cast<size_t>(std::min<unsigned long long>(kSlot, bytes - at));
    read_full(c, ring.data() + (at / kSlot % kSlots) * kSlot, len);
    at += len;
    std::lock_guard<std::mutex> lock(m);
    received = at;
    cv.notify_all();
  }
  installer.join();
  munmap(area, bytes);
  close(uffd);
  return installed;
}

int tcp_server(int port) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("bind");
  if (listen(ls, 4) < 0) die("listen");
  std::printf("ready\n");
  std::fflush(stdout);
  std::vector<char> buf(1 << 20);
  for (;;) {
    int c = accept(ls, nullptr, nullptr);
    if (c < 0) die("accept");
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char mode;
    if (read(c, &mode, 1) != 1) {
      close(c);
      continue;
    }
    if (mode == 'P') {
      char b;
      while (read(c, &b, 1) == 1) write_full(c, &b, 1);
    } else if (mode == 'U' || mode == 'W') {
      unsigned long long bytes = 0;
      read_full(c, &bytes, sizeof bytes);
      const unsigned long long total = mode == 'U' ? receive_and_install(c, bytes) : receive_then_install(c, bytes);
      write_full(c, &total, sizeof total);
    } else {
      unsigned long long total = 0;
      ssize_t r;
      while ((r = read(c, buf.data(), buf.size())) > 0) total += static_cast<unsigned long long>(r);
      write_full(c, &total, sizeof total);
    }
    close(c);
  }
}

int connect_to(const char* addr, int port) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, addr, &a.sin_addr) != 1) die("inet_pton");
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) die("connect");
  int one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return s;
}

int tcp_client(const char* addr, int port, double seconds) {
  int s = connect_to(addr, port);
  write_full(s, "P", 1);
  std::vector<double> rtt;
  for (int i = 0; i < 200; i++) {
    char b = static_cast<char>(i);
    double t = now_s();
    write_full(s, &b, 1);
    read_full(s, &b, 1);
    rtt.push_back((now_s() - t) * 1e6);
  }
  close(s);
  s = connect_to(addr, port);
  write_full(s, "B", 1);
  std::vector<char> buf(1 << 20, 'x');
  unsigned long long sent = 0;
  double t0 = now_s();
  while (now_s() - t0 < seconds) {
    write_full(s, buf.data(), buf.size());
    sent += buf.size();
  }
  shutdown(s, SHUT_WR);
  unsigned long long received = 0;
  read_full(s, &received, sizeof received);
  double dt = now_s() - t0;  // until the receiver had every byte
  close(s);
  if (received != sent) {
    std::fprintf(stderr, "limits: tcp: sent %llu, receiver counted %llu\n", sent, received);
    return 1;
  }
  std::printf("{\"mode\":\"tcp\",\"rttP50Us\":%.1f,\"rttP99Us\":%.1f,\"bytes\":%llu,\"MBs\":%.1f}\n", quantile(rtt, 0.5),
              quantile(rtt, 0.99), sent, sent / dt / 1e6);
  return 0;
}

int tcp_uffd_client(const char* addr, int port, size_t mib, int threads) {
  int s = connect_to(addr, port);
  const unsigned long long bytes = static_cast<unsigned long long>(mib) << 20;
  write_full(s, threads == 2 ? "W" : "U", 1);
  write_full(s, &bytes, sizeof bytes);
  std::vector<char> buf(1 << 20);
  for (size_t i = 0; i < buf.size(); i++) buf[i] = static_cast<char>(i * 131 + 7);
  double t0 = now_s();
  for (unsigned long long sent = 0; sent < bytes; sent += buf.size()) write_full(s, buf.data(), buf.size());
  unsigned long long installed = 0;
  read_full(s, &installed, sizeof installed);
  double dt = now_s() - t0;  // until the server had installed every page
  close(s);
  if (installed != bytes) {
    std::fprintf(stderr, "limits: tcp-uffd: sent %llu, server installed %llu\n", bytes, installed);
    return 1;
  }
  std::printf("{\"mode\":\"tcp-uffd\",\"threads\":%d,\"bytes\":%llu,\"MBs\":%.1f}\n", threads, bytes, bytes / dt / 1e6);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "memcpy") return memcpy_mode(argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 256);
  if (mode == "uffd") return uffd_mode(argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 64);
  if (mode == "uffd-bulk") {
    return uffd_bulk_mode(argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 256, argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 1024);
  }
  if (mode == "fresh-touch") {
    return fresh_touch_mode(argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 2048, argc > 3 ? std::atoi(argv[3]) : 10);
  }
  if (mode == "tcp-server" && argc == 3) return tcp_server(std::atoi(argv[2]));
  if (mode == "tcp-client" && argc == 5) return tcp_client(argv[2], std::atoi(argv[3]), std::atof(argv[4]));
  if (mode == "tcp-uffd-client" && (argc == 5 || argc == 6)) {
    return tcp_uffd_client(argv[2], std::atoi(argv[3]), std::strtoul(argv[4], nullptr, 10), argc == 6 ? std::atoi(argv[5]) : 1);
  }
  std::fprintf(stderr, "usage: limits memcpy [MiB] | uffd [MiB] | uffd-bulk [MiB] [chunk KiB] | fresh-touch [MiB] [pause s] | tcp-server PORT | tcp-client ADDR PORT SECONDS | tcp-uffd-client ADDR PORT MiB [THREADS]\n");
  return 2;
}
