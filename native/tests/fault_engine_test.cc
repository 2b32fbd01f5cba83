// The fault engine end to end with a REAL userfaultfd in this process: the test plays `criu restore` (a uffd on
// an anonymous region registered MISSING, handed over through lazy-pages.socket, then RSTF) and the restored
// program (threads touching pages in random order, madvise(DONTNEED), mremap); the engine serves the faults from
// a local pages file or from lazyd's own page server over TCP. Every byte is checked.
#include "lazy/fault_engine.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernel/uffd.h"
#include "lazy/restore_handshake.h"
#include "server/page_index.h"
#include "server/page_server.h"
#include "wire/wire.h"

#include "check.h"

using namespace lazyd;


static const uint64_t P = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

// The engine's flag-backed settings have no default in the core (src/config/flags.ts holds lazyd's): these tests
// run with these.
static FaultEngineConfig engine_config() {
  FaultEngineConfig cfg;
  cfg.fault_around_bytes = 64 * 1024;
  cfg.bg_min_bytes = 256 * 1024;
  cfg.bg_max_bytes = 1024 * 1024;
  cfg.bg_in_flight_bytes = 2 * 1024 * 1024;
  cfg.bg_in_flight_bytes_faulting = 256 * 1024;
  cfg.bg_in_flight_max_bytes = 16 * 1024 * 1024;
  cfg.max_requests_in_flight = 64;
  cfg.stall_timeout_ms = 30000;
  cfg.rstf_timeout_ms = 60000;
  return cfg;
}

// The same for the page server the remote tests fetch from.
static PageServerConfig server_config() {
  PageServerConfig cfg;
  cfg.session.max_request_pages = 65536;
  cfg.session.max_queued_replies = 64;
  cfg.session.max_queued_bytes = 64ull << 20;
  cfg.max_sessions = 16;
  cfg.stall_timeout_ms = 30000;
  cfg.idle_timeout_ms = 300000;
  cfg.tls_handshake_timeout_ms = 10000;
  return cfg;
}

// The dumped content: every 8-byte word names its image page and position; never zero.
static uint64_t word_of(uint64_t img_addr, size_t word) {
  return (img_addr * 0x9E3779B97F4A7C15ull) ^ (word * 0xC2B2AE3D27D4EB4Full) ^ 0x8000000000000001ull;
}

static bool page_matches(const uint8_t* page, uint64_t img_addr) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(page);
  for (size_t i = 0; i < P / 8; i++)
    if (w[i] != word_of(img_addr, i)) return false;
  return true;
}

static bool page_is_zero(const uint8_t* page) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(page);
  for (size_t i = 0; i < P / 8; i++)
    if (w[i] != 0) return false;
  return true;
}

static std::string make_dir() {
  char tmpl[] = "/tmp/lazyd-fe-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

struct Region {
  int uffd = -1;
  uint8_t* base = nullptr;
  size_t pages = 0;
  uint64_t addr(size_t page) const { return reinterpret_cast<uint64_t>(base) + page * P; }
};

// What criu restore does in the task (docs/protocol.md §3.2, §4.1): uffd with the non-cooperative events, VMA registered MISSING.
static Region make_region(size_t pages) {
  Region r;
  r.pages = pages;
  r.uffd = uffd::open_fd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  CHECK(r.uffd >= 0);
  uint64_t features = 0;
  CHECK(uffd::api(r.uffd, uffd::kNonCoopFeatures, &features, nullptr) == 0);
  r.base = static_cast<uint8_t*>(mmap(nullptr, pages * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(r.base != MAP_FAILED);
  CHECK(uffd::register_range(r.uffd, r.addr(0), pages * P, UFFDIO_REGISTER_MODE_MISSING, nullptr) == 0);
  return r;
}

// Lazy runs in page indexes of the region, [first, end).
struct PageRunIdx {
  size_t first, end;
};

// Writes the pages file for the runs (in order) and returns the engine's runs.
static std::vector<FaultEngineConfig::Run> write_pages(const Region& r, const std::vector<PageRunIdx>& runs,
                                                       const std::string& path, int* fd_out) {
  int fd = open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(fd >= 0);
  std::vector<FaultEngineConfig::Run> out;
  std::vector<uint8_t> page(P);
  uint64_t offset = 0;
  for (const PageRunIdx& run : runs) {
    FaultEngineConfig::Run er;
    er.img_start = r.addr(run.first);
    er.nr_pages = run.end - run.first;
    er.fd = fd;
    er.file_offset = offset;
    out.push_back(er);
    for (size_t p = run.first; p < run.end; p++) {
      uint64_t* w = reinterpret_cast<uint64_t*>(page.data());
      for (size_t i = 0; i < P / 8; i++) w[i] = word_of(r.addr(p), i);
      CHECK(pwrite(fd, page.data(), P, static_cast<off_t>(offset)) == static_cast<ssize_t>(P));
      offset += P;
    }
  }
  *fd_out = fd;
  return out;
}

struct Events {
  std::mutex mu;
  std::vector<EngineEvent> list;
  void add(const EngineEvent& e) {
    std::lock_guard<std::mutex> lock(mu);
    list.push_back(e);
  }
  size_t count(EngineEvent::Kind kind) {
    std::lock_guard<std::mutex> lock(mu);
    return static_cast<size_t>(std::count_if(list.begin(), list.end(), [&](const EngineEvent& e) { return e.kind == kind; }));
  }
  std::string failure() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& e : list)
      if (e.kind == EngineEvent::Kind::kFailed) return e.message;
    return "";
  }
};

static EngineState wait_end(FaultEngine& engine, int seconds) {
  for (int i = 0; i < seconds * 100; i++) {
    EngineState s = engine.state();
    if (s == EngineState::kDone || s == EngineState::kFailed) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return engine.state();
}

static void print_stats(const char* name, const EngineStats& s) {
  std::printf("%s: faults %lu, pages fault %lu around %lu background %lu zero %lu exist %lu dropped %lu of %lu, "
              "%.3f s; latency buckets:",
              name, (unsigned long)s.summary.faults, (unsigned long)s.summary.pages_fault,
              (unsigned long)s.summary.pages_around, (unsigned long)s.summary.pages_background,
              (unsigned long)s.summary.pages_zero, (unsigned long)s.summary.pages_exist,
              (unsigned long)s.summary.pages_dropped, (unsigned long)s.summary.pages_total, s.summary.seconds);
  for (size_t i = 0; i < kLatencyBuckets; i++) std::printf(" %lu", (unsigned long)s.latency_us[i]);
  std::printf("; p50 <= %lu p99 <= %lu max %lu us\n", (unsigned long)s.latency_p50_us, (unsigned long)s.latency_p99_us,
              (unsigned long)s.latency_max_us);
}

static uint64_t installed(const EngineStats& s) {
  return s.summary.pages_fault + s.summary.pages_around + s.summary.pages_background + s.summary.pages_exist;
}

// Threads touching the given pages in random order; each checks the whole page against expect(page).
static void touch_all(const Region& r, const std::vector<size_t>& pages, int threads,
                      const std::function<bool(size_t, const uint8_t*)>& expect, std::atomic<int>* bad) {
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; t++) {
    workers.emplace_back([&, t] {
      std::vector<size_t> order = pages;
      std::mt19937_64 rng(1000 + t);
      std::shuffle(order.begin(), order.end(), rng);
      for (size_t p : order) {
        const uint8_t* page = r.base + p * P;
        // Touch one random word first (the fault), then check the whole page.
        volatile uint64_t w = reinterpret_cast<const volatile uint64_t*>(page)[rng() % (P / 8)];
        (void)w;
        if (!expect(p, page)) {
          if (bad->fetch_add(1) < 5) std::fprintf(stderr, "thread %d: page %zu has wrong content\n", t, p);
        }
      }
    });
  }
  for (auto& w : workers) w.join();
}

// Local source, background drain on, faults from 4 threads racing it, a zombie, an mremap before RSTF, a
// madvise(DONTNEED) during the lazy phase.
static void test_local_full() {
  const size_t N = 16 * 1024 * 1024 / P;  // 16 MiB
  const std::string dir = make_dir();
  Region r = make_region(N);
  // Runs as the caller gives them (already split at VMA ends); pages [N/2, N/2+48) were never dumped.
  const size_t hole = N / 2;
  std::vector<PageRunIdx> runs = {{0, 1000}, {1000, hole}, {hole + 48, N}};
  int pages_fd = -1;
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 2;
  cfg.tasks.push_back({4242, write_pages(r, runs, dir + "/pages-1.img", &pages_fd)});
  cfg.source = FaultEngineConfig::Source::kLocal;
  cfg.bg_max_bytes = 1024 * 1024;
  Events events;
  FaultEngine engine(cfg, [&](const EngineEvent& e) {
    if (getenv("LAZYD_TEST_VERBOSE")) std::fprintf(stderr, "event %d pid %d %s\n", (int)e.kind, e.pid, e.message.c_str());
    events.add(e);
  });
  CHECK(engine.start() == 0);
  CHECK(engine.socket_path() == dir + "/lazy-pages.socket");

  // criu restore: connect, a zombie, the task's uffd.
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_zombie(sock, 77) == 0);
  CHECK(handshake::send_task(sock, 4242, r.uffd) == 0);
  close(r.uffd);  // the restorer closes its copy; the engine's keeps the registration alive

  // mremap pages [100, 200) elsewhere before RSTF (REMAP + UNMAP events).
  const size_t mv_first = 100, mv_n = 100;
  uint8_t* target = static_cast<uint8_t*>(mmap(nullptr, mv_n * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(target != MAP_FAILED);
  CHECK(mremap(r.base + mv_first * P, mv_n * P, mv_n * P, MREMAP_MAYMOVE | MREMAP_FIXED, target) == target);

  const size_t d_first = 3000, d_n = 100;  // the DONTNEED part
  std::vector<size_t> pages;
  for (size_t p = 0; p < N; p++) {
    if (p >= mv_first && p < mv_first + mv_n) continue;
    if (p >= d_first && p < d_first + d_n) continue;
    pages.push_back(p);
  }
  auto expect = [&](size_t p, const uint8_t* page) {
    if (p >= hole && p < hole + 48) return page_is_zero(page);
    return page_matches(page, r.addr(p));
  };
  std::atomic<int> bad{0};
  std::thread toucher([&] { touch_all(r, pages, 4, expect, &bad); });

  // Some of the DONTNEED part is read (installed) first, then dropped: afterwards it must read as zeros.
  for (size_t p = d_first; p < d_first + 10; p++) CHECK(page_matches(r.base + p * P, r.addr(p)));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // DONTNEED before RSTF: the drain has not started, so the range is still lazy and the REMOVE event is certain
  // (after RSTF the drain may finish the task, closing its uffd, before madvise runs).
  CHECK(madvise(r.base + d_first * P, d_n * P, MADV_DONTNEED) == 0);
  CHECK(handshake::send_finished(sock) == 0);  // RSTF comes late; the drain starts now
  bool zeros = true;
  for (size_t p = d_first; p < d_first + d_n; p++) zeros &= page_is_zero(r.base + p * P);
  CHECK(zeros);
  // The moved pages read their dump-time content at the new place.
  bool moved_ok = true;
  for (size_t i = 0; i < mv_n; i++) moved_ok &= page_matches(target + i * P, r.addr(mv_first + i));
  CHECK(moved_ok);
  toucher.join();
  CHECK(bad.load() == 0);
  close(sock);

  EngineState end = wait_end(engine, 30);
  if (end != EngineState::kDone) std::fprintf(stderr, "engine: %s %s\n", engine_state_name(end), engine.error().c_str());
  CHECK(end == EngineState::kDone);
  engine.join();
  EngineStats s = engine.stats();
  print_stats("local+drain", s);
  const uint64_t lazy_pages = N - 48;
  CHECK(s.summary.pages_total == lazy_pages);
  CHECK(installed(s) + s.summary.pages_dropped == lazy_pages);
  CHECK(s.summary.pages_dropped <= d_n);
  CHECK(s.summary.pages_zero > 0);  // the never-dumped hole
  CHECK(s.events_remap == 1);
  CHECK(s.events_remove == 1);
  CHECK(s.events_unmap >= 1);  // the old place of the mremap
  CHECK(s.pages_remaining == 0 && s.pages_in_flight == 0);
  CHECK(s.requests_in_flight == 0);
  CHECK(s.tasks_total == 1 && s.tasks_active == 0);
  uint64_t hist = 0;
  for (uint64_t b : s.latency_us) hist += b;
  CHECK(hist > 0);
  // Metrics: the histogram's count is its buckets' sum; every fault message ended with one result.
  CHECK(hist == s.latency_count);
  CHECK(s.latency_sum_us > 0);
  {
    // The fine figures are the same samples: the exact max lies in the last non-empty coarse bucket, and the p50
    // near the coarse bucket holding the median (a fine bucket is at most 1/64 of its values wide).
    size_t last = 0, median = 0;
    uint64_t seen = 0;
    for (size_t i = 0; i < kLatencyBuckets; i++) {
      if (s.latency_us[i]) last = i;
      if (seen < (hist + 1) / 2 && seen + s.latency_us[i] >= (hist + 1) / 2) median = i;
      seen += s.latency_us[i];
    }
    const auto lower = [](size_t i) { return i == 0 ? 0 : kLatencyBoundsUs[i - 1] + 1; };
    CHECK(s.latency_max_us >= lower(last) && s.latency_max_us <= kLatencyBoundsUs[last]);
    CHECK(s.latency_p50_us >= lower(median) && s.latency_p50_us <= kLatencyBoundsUs[median] * 65 / 64 + 1);
    CHECK(s.latency_p50_us <= s.latency_p99_us && s.latency_p99_us <= s.latency_max_us);
  }
  uint64_t by_result = 0;
  for (uint64_t n : s.faults_by_result) by_result += n;
  CHECK(by_result == s.summary.faults);
  CHECK(s.faults_by_result[static_cast<size_t>(FaultResult::kZeroPage)] == s.summary.pages_zero);
  CHECK(s.faults_by_result[static_cast<size_t>(FaultResult::kCopied)] > 0);
  CHECK(std::string(fault_result_name(FaultResult::kCopied)) == "copied");
  {
    // A task's own totals: the page bytes of its replies and its own duration (not the engine's).
    std::lock_guard<std::mutex> lock(events.mu);
    for (auto& e : events.list) {
      if (e.kind != EngineEvent::Kind::kTaskDone) continue;
      const uint64_t got = e.summary.pages_fault + e.summary.pages_around + e.summary.pages_background;
      CHECK(e.summary.bytes_received >= got * P);
      CHECK(e.summary.seconds > 0);
    }
  }
  CHECK(events.count(EngineEvent::Kind::kListening) == 1);
  CHECK(events.count(EngineEvent::Kind::kZombie) == 1);
  CHECK(events.count(EngineEvent::Kind::kTask) == 1);
  {
    // The hand-over's SCM_CREDENTIALS name the sending process (here: us), for the kill-on-failure policy.
    std::lock_guard<std::mutex> lock(events.mu);
    for (auto& e : events.list)
      if (e.kind == EngineEvent::Kind::kTask)
        CHECK(e.host_pid == getpid() && e.message == "host pid " + std::to_string(getpid()));
  }
  CHECK(events.count(EngineEvent::Kind::kRestoreFinished) == 1);
  CHECK(events.count(EngineEvent::Kind::kTaskDone) == 1);
  CHECK(events.count(EngineEvent::Kind::kDone) == 1);
  CHECK(events.count(EngineEvent::Kind::kFailed) == 0);

  // After the engine closed the uffd: everything is in place (no faults left to serve), DONTNEED part zero.
  bool all = true;
  for (size_t p = 0; p < N; p++) {
    if (p >= mv_first && p < mv_first + mv_n) continue;
    if (p >= d_first && p < d_first + d_n) all &= page_is_zero(r.base + p * P);
    else all &= expect(p, r.base + p * P);
  }
  CHECK(all);
  for (size_t i = 0; i < mv_n; i++) all &= page_matches(target + i * P, r.addr(mv_first + i));
  CHECK(all);
  munmap(r.base, N * P);
  munmap(target, mv_n * P);
  close(pages_fd);
}

// Background drain off: every page arrives through faults and fault-around; the engine ends once all are in.
static void test_local_faults_only() {
  const size_t N = 4 * 1024 * 1024 / P;
  const std::string dir = make_dir();
  Region r = make_region(N);
  int pages_fd = -1;
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  cfg.tasks.push_back({10, write_pages(r, {{0, N / 3}, {N / 3, N}}, dir + "/pages-1.img", &pages_fd)});
  cfg.background = false;
  FaultEngine engine(cfg);
  CHECK(engine.start() == 0);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_task(sock, 10, r.uffd) == 0);
  CHECK(handshake::send_finished(sock) == 0);
  close(r.uffd);
  close(sock);
  std::vector<size_t> pages(N);
  for (size_t p = 0; p < N; p++) pages[p] = p;
  std::atomic<int> bad{0};
  touch_all(r, pages, 3, [&](size_t p, const uint8_t* page) { return page_matches(page, r.addr(p)); }, &bad);
  CHECK(bad.load() == 0);
  CHECK(wait_end(engine, 30) == EngineState::kDone);
  engine.join();
  EngineStats s = engine.stats();
  print_stats("local faults only", s);
  CHECK(s.summary.pages_background == 0);
  CHECK(s.summary.pages_fault > 0);
  CHECK(s.summary.pages_around > 0);
  CHECK(s.summary.pages_fault + s.summary.pages_around == N);
  CHECK(s.summary.pages_zero == 0);
  munmap(r.base, N * P);
  close(pages_fd);
}

// --drain-rate: a local drain of 8 MiB at 16 MiB/s (unlimited it takes milliseconds) requests at most rate x
// elapsed + one largest request (the bucket's burst), the bound measured over the engine's whole life.
static void test_local_rate_cap() {
  const size_t N = 8 * 1024 * 1024 / P;
  const uint64_t rate = 16 * 1024 * 1024;
  const std::string dir = make_dir();
  Region r = make_region(N);
  int pages_fd = -1;
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  cfg.tasks.push_back({10, write_pages(r, {{0, N}}, dir + "/pages-1.img", &pages_fd)});
  cfg.bg_rate_bytes = rate;
  const auto t0 = std::chrono::steady_clock::now();
  FaultEngine engine(cfg);
  CHECK(engine.start() == 0);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_task(sock, 10, r.uffd) == 0);
  CHECK(handshake::send_finished(sock) == 0);
  close(r.uffd);
  close(sock);
  CHECK(wait_end(engine, 30) == EngineState::kDone);
  engine.join();
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EngineStats s = engine.stats();
  print_stats("local drain at 16 MiB/s", s);
  std::printf("  %lu bytes by the drain in %.3f s (cap %.0f + burst)\n", (unsigned long)s.bytes_background, elapsed,
              rate * elapsed);
  CHECK(s.summary.pages_background == N);
  CHECK(s.bytes_background == N * P);
  CHECK(static_cast<double>(s.bytes_background) <= rate * elapsed + cfg.bg_max_bytes);
  bool all = true;
  for (size_t p = 0; p < N; p++) all &= page_matches(r.base + p * P, r.addr(p));
  CHECK(all);
  munmap(r.base, N * P);
  close(pages_fd);
}

// Remote: lazyd's own page server (page_server.h) serves the same pages over TCP in the given format.
static void test_remote(wire::Format format) {
  const size_t N = 8 * 1024 * 1024 / P;
  const std::string dir = make_dir();
  Region r = make_region(N);
  int pages_fd = -1;
  std::vector<PageRunIdx> runs = {{0, 700}, {700, 1500}, {1600, N}};
  std::vector<FaultEngineConfig::Run> engine_runs = write_pages(r, runs, dir + "/pages-1.img", &pages_fd);

  auto index = std::make_shared<PageIndex>(P);
  const int file = index->add_file(dir + "/pages-1.img");
  CHECK(file >= 0);
  std::vector<PageRun> server_runs;
  for (const auto& er : engine_runs) {
    PageRun pr;
    pr.vaddr = er.img_start;
    pr.nr_pages = er.nr_pages;
    pr.flags = wire::PE_LAZY | wire::PE_PRESENT;
    pr.file = file;
    pr.file_offset = er.file_offset;
    server_runs.push_back(pr);
  }
  CHECK(index->add_task(555, server_runs) == 0);
  PageServerConfig scfg = server_config();
  scfg.session.format = format;
  scfg.single_session = true;
  std::mutex smu;
  std::vector<ServerEvent> sevents;
  PageServer server(scfg, index, [&](const ServerEvent& e) {
    std::lock_guard<std::mutex> lock(smu);
    sevents.push_back(e);
  });
  uint16_t port = 0;
  CHECK(server.listen("127.0.0.1", 0, &port) == 0);
  CHECK(server.start() == 0);

  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  for (auto& er : engine_runs) er.fd = -1;  // remote: no local data
  cfg.tasks.push_back({555, engine_runs});
  cfg.source = FaultEngineConfig::Source::kRemote;
  cfg.address = "127.0.0.1";
  cfg.port = port;
  cfg.format = format;
  Events events;
  FaultEngine engine(cfg, [&](const EngineEvent& e) { events.add(e); });
  CHECK(engine.start() == 0);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_task(sock, 555, r.uffd) == 0);
  close(r.uffd);
  const size_t d_first = 0, d_n = 200;  // dropped by madvise(DONTNEED), likely while the drain has it in flight
  std::vector<size_t> pages;
  for (size_t p = 0; p < N; p += 3)
    if (p < d_first || p >= d_first + d_n) pages.push_back(p);
  std::atomic<int> bad{0};
  std::thread toucher([&] {
    touch_all(r, pages, 2, [&](size_t p, const uint8_t* page) {
      if (p >= 1500 && p < 1600) return page_is_zero(page);
      return page_matches(page, r.addr(p));
    }, &bad);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(handshake::send_finished(sock) == 0);
  CHECK(madvise(r.base + d_first * P, d_n * P, MADV_DONTNEED) == 0);
  bool zeros = true;
  for (size_t p = d_first; p < d_first + d_n; p++) zeros &= page_is_zero(r.base + p * P);
  CHECK(zeros);
  toucher.join();
  close(sock);
  CHECK(bad.load() == 0);
  EngineState end = wait_end(engine, 30);
  if (end != EngineState::kDone) std::fprintf(stderr, "engine: %s\n", engine.error().c_str());
  CHECK(end == EngineState::kDone);
  engine.join();
  EngineStats s = engine.stats();
  print_stats(format == wire::Format::V24 ? "remote v24" : "remote v32", s);
  CHECK(installed(s) + s.summary.pages_dropped == N - 100);
  CHECK(s.summary.pages_background > 0);
  // How many drain replies were installed over several loop passes depends on how far the drain's requests grew
  // while the faults ran: counted here, checked in test_drain_start (a drain with no faults).
  std::printf("  drain reply parts left to a later pass: %lu\n", (unsigned long)s.install_slices);
  // The link estimate has samples (the drain's window follows it): loopback RTT and rate.
  std::printf("  link: rtt %lu us, %lu B/s, drain window %lu B\n", (unsigned long)s.link_rtt_us,
              (unsigned long)s.link_bandwidth_bps, (unsigned long)s.bg_window_bytes);
  CHECK(s.link_rtt_us > 0 && s.link_bandwidth_bps > 0);
  CHECK(s.bg_window_bytes >= 256 * 1024 && s.bg_window_bytes <= 16 * 1024 * 1024);
  std::printf("  (reply pages discarded after the DONTNEED: %lu)\n", (unsigned long)s.pages_discarded);
  CHECK(s.summary.bytes_received >= installed(s) * P);
  CHECK(events.count(EngineEvent::Kind::kSourceConnected) == 1);
  bool all = true;
  for (size_t p = 0; p < N; p++) {
    if (p >= 1500 && p < 1600) continue;  // never dumped and maybe never touched
    if (p >= d_first && p < d_first + d_n) all &= page_is_zero(r.base + p * P);
    else all &= page_matches(r.base + p * P, r.addr(p));
  }
  CHECK(all);
  server.request_stop(1000);
  server.join();
  {
    std::lock_guard<std::mutex> lock(smu);
    bool closed = false;
    for (auto& e : sevents)
      if (e.kind == ServerEvent::Kind::kSessionEnd) closed = e.ok && e.stats.closed_by_request;
    CHECK(closed);  // the engine ended the session with CLOSE
  }
  munmap(r.base, N * P);
  close(pages_fd);
}

// fork() during the lazy phase: the child's uffd arrives as a FORK event and is served from the parent's image
// pid, including pages the parent had in flight; the child exits early (its task ends as gone or done).
static void test_fork() {
  const size_t N = 2 * 1024 * 1024 / P;
  const std::string dir = make_dir();
  Region r = make_region(N);
  int pages_fd = -1;
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  cfg.tasks.push_back({31, write_pages(r, {{0, N}}, dir + "/pages-1.img", &pages_fd)});
  Events events;
  FaultEngine engine(cfg, [&](const EngineEvent& e) { events.add(e); });
  CHECK(engine.start() == 0);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(handshake::send_task(sock, 31, r.uffd) == 0);
  close(r.uffd);
  // The parent has some pages before the fork.
  for (size_t p = 0; p < N; p += 37) CHECK(page_matches(r.base + p * P, r.addr(p)));
  pid_t child = fork();
  CHECK(child >= 0);
  if (child == 0) {
    // Only memory reads and _exit here: the parent is multi-threaded.
    int bad = 0;
    for (size_t p = 0; p < N; p += 2) bad += !page_matches(r.base + p * P, r.addr(p));
    _exit(bad == 0 ? 0 : 1);
  }
  int status = -1;
  CHECK(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(handshake::send_finished(sock) == 0);
  bool ok = true;
  for (size_t p = 0; p < N; p++) ok &= page_matches(r.base + p * P, r.addr(p));
  CHECK(ok);
  close(sock);
  EngineState end = wait_end(engine, 30);
  if (end != EngineState::kDone) std::fprintf(stderr, "engine: %s\n", engine.error().c_str());
  CHECK(end == EngineState::kDone);
  engine.join();
  EngineStats s = engine.stats();
  print_stats("fork", s);
  CHECK(s.events_fork == 1);
  CHECK(s.tasks_total == 2);
  CHECK(installed(s) + s.summary.pages_dropped == s.summary.pages_total);
  CHECK(events.count(EngineEvent::Kind::kFork) == 1);
  CHECK(events.count(EngineEvent::Kind::kTaskDone) + events.count(EngineEvent::Kind::kTaskExited) == 2);
  munmap(r.base, N * P);
  close(pages_fd);
}

// A fake page server: accepts, reads requests, and either hangs up after the first one or never answers.
struct FakeServer {
  int lfd = -1;
  uint16_t port = 0;
  std::thread thread;
  void start(bool hang_up) {
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    CHECK(listen(lfd, 1) == 0);
    socklen_t len = sizeof a;
    getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    thread = std::thread([this, hang_up] {
      int fd = accept(lfd, nullptr, nullptr);
      if (fd < 0) return;
      uint8_t buf[4096];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (!hang_up) {
        while (n > 0) n = recv(fd, buf, sizeof buf, 0);  // read requests, answer none
      }
      close(fd);
    });
  }
  ~FakeServer() {
    if (lfd >= 0) shutdown(lfd, SHUT_RDWR);
    if (thread.joinable()) thread.join();
    if (lfd >= 0) close(lfd);
  }
};

static void expect_engine_failure(const char* what, bool hang_up, int stall_ms, const char* fragment) {
  const size_t N = 256;
  const std::string dir = make_dir();
  Region r = make_region(N);
  FakeServer fake;
  fake.start(hang_up);
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  FaultEngineConfig::Run run;
  run.img_start = r.addr(0);
  run.nr_pages = N;
  cfg.tasks.push_back({9, {run}});
  cfg.source = FaultEngineConfig::Source::kRemote;
  cfg.address = "127.0.0.1";
  cfg.port = fake.port;
  cfg.format = wire::Format::V24;
  cfg.stall_timeout_ms = stall_ms;
  Events events;
  auto engine = std::make_unique<FaultEngine>(cfg, [&](const EngineEvent& e) { events.add(e); });
  CHECK(engine->start() == 0);
  int sock = handshake::connect_socket(engine->socket_path());
  CHECK(handshake::send_task(sock, 9, r.uffd) == 0);
  close(r.uffd);
  CHECK(handshake::send_finished(sock) == 0);  // the drain sends GETs at once
  CHECK(wait_end(*engine, 10) == EngineState::kFailed);
  engine->join();
  const std::string error = engine->error();
  std::printf("%s: %s\n", what, error.c_str());
  CHECK(error.find(fragment) != std::string::npos);
  CHECK(events.failure() == error);
  // The uffd stays open while the engine object lives; destroying it lets the kernel unregister the range.
  engine.reset();
  CHECK(page_is_zero(r.base));
  close(sock);
  munmap(r.base, N * P);
}

static void test_handshake_failures() {
  std::vector<Region> regions_to_unmap;
  // Restore hangs up before RSTF.
  {
    const std::string dir = make_dir();
    Region r = make_region(16);
    FaultEngineConfig cfg = engine_config();
    cfg.work_dir = dir;
    cfg.nr_tasks = 1;
    FaultEngine engine(cfg);
    CHECK(engine.start() == 0);
    int sock = handshake::connect_socket(engine.socket_path());
    CHECK(handshake::send_task(sock, 1, r.uffd) == 0);
    close(r.uffd);
    close(sock);
    CHECK(wait_end(engine, 10) == EngineState::kFailed);
    engine.join();
    std::printf("restore hang-up: %s\n", engine.error().c_str());
    CHECK(engine.error().find("restore closed the connection before RSTF") != std::string::npos);
    // No munmap here: with the failed engine still holding the uffd, munmap would wait for its UNMAP event
    // to be read. The region goes at the end of the block, after the engine.
    regions_to_unmap.push_back(r);
  }
  for (const Region& r : regions_to_unmap) munmap(r.base, r.pages * P);
  // Nobody connects in time.
  {
    FaultEngineConfig cfg = engine_config();
    cfg.work_dir = make_dir();
    cfg.nr_tasks = 1;
    cfg.accept_timeout_ms = 100;
    FaultEngine engine(cfg);
    CHECK(engine.start() == 0);
    CHECK(wait_end(engine, 10) == EngineState::kFailed);
    engine.join();
    CHECK(engine.error().find("did not connect") != std::string::npos);
  }
  // Every hand-over, then no RSTF: bounded (lazyd's default, 60 s after the last hand-over, is checked with the
  // flags in test/unit/config.test.ts), here 150 ms.
  {
    const std::string dir = make_dir();
    Region r = make_region(16);
    FaultEngineConfig cfg = engine_config();
    cfg.work_dir = dir;
    cfg.nr_tasks = 1;
    cfg.rstf_timeout_ms = 150;
    {
      FaultEngine engine(cfg);
      CHECK(engine.start() == 0);
      int sock = handshake::connect_socket(engine.socket_path());
      CHECK(handshake::send_task(sock, 1, r.uffd) == 0);
      close(r.uffd);
      CHECK(wait_end(engine, 10) == EngineState::kFailed);
      engine.join();
      std::printf("no RSTF: %s\n", engine.error().c_str());
      CHECK(engine.error().find("did not send RSTF within 150 ms") != std::string::npos);
      close(sock);
    }
    munmap(r.base, r.pages * P);  // after the engine (and its uffd) is gone
  }
  // Too few hand-overs in time.
  {
    FaultEngineConfig cfg = engine_config();
    cfg.work_dir = make_dir();
    cfg.nr_tasks = 2;
    cfg.handover_timeout_ms = 100;
    FaultEngine engine(cfg);
    CHECK(engine.start() == 0);
    int sock = handshake::connect_socket(engine.socket_path());
    CHECK(handshake::send_zombie(sock, 5) == 0);
    CHECK(wait_end(engine, 10) == EngineState::kFailed);
    engine.join();
    CHECK(engine.error().find("handed over 1 of 2") != std::string::npos);
    close(sock);
  }
  // Invalid configs are refused by start().
  {
    FaultEngineConfig cfg = engine_config();
    cfg.work_dir = make_dir();
    cfg.source = FaultEngineConfig::Source::kRemote;
    FaultEngine engine(cfg);
    CHECK(engine.start() == -EINVAL);
    CHECK(engine.state() == EngineState::kFailed);
    FaultEngineConfig cfg2 = engine_config();
    cfg2.work_dir = make_dir();
    FaultEngineConfig::Run a, b;
    a.img_start = 0x10000;
    a.nr_pages = 4;
    b.img_start = 0x12000;
    b.nr_pages = 4;
    cfg2.tasks.push_back({1, {a, b}});  // overlapping
    FaultEngine engine2(cfg2);
    CHECK(engine2.start() == -EINVAL);
    // stop() on an engine waiting for restore.
    FaultEngineConfig cfg3 = engine_config();
    cfg3.work_dir = make_dir();
    cfg3.nr_tasks = 1;
    FaultEngine engine3(cfg3);
    CHECK(engine3.start() == 0);
    engine3.stop();
    CHECK(engine3.state() == EngineState::kFailed);
    CHECK(engine3.error() == "stopped");
  }
}

// defer_tasks: the engine listens with no tasks; the restore connects and hands over (task, zombie, RSTF)
// before the tasks are known: restore-connected is emitted and nothing is read; set_tasks() then loads the
// ranges and the waiting hand-overs are read, every page served. A bad range given late fails the engine.
static void test_deferred_tasks() {
  const size_t N = 2 * 1024 * 1024 / P;
  const std::string dir = make_dir();
  Region r = make_region(N);
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.defer_tasks = true;
  Events events;
  FaultEngine engine(cfg, [&](const EngineEvent& e) { events.add(e); });
  CHECK(engine.start() == 0);
  CHECK(engine.state() == EngineState::kWaitingRestore || engine.state() == EngineState::kIdle);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_zombie(sock, 9) == 0);
  CHECK(handshake::send_task(sock, 20, r.uffd) == 0);
  CHECK(handshake::send_finished(sock) == 0);
  close(r.uffd);
  for (int i = 0; i < 3000 && events.count(EngineEvent::Kind::kRestoreConnected) == 0; i++)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(events.count(EngineEvent::Kind::kRestoreConnected) == 1);
  // The engine thread emitted restore-connected and returned without reading: no hand-over is taken yet.
  CHECK(events.count(EngineEvent::Kind::kTask) == 0 && events.count(EngineEvent::Kind::kZombie) == 0);
  CHECK(engine.state() == EngineState::kWaitingRestore);
  // The images are written only now.
  int pages_fd = -1;
  std::vector<FaultEngineConfig::Task> tasks;
  tasks.push_back({20, write_pages(r, {{0, N / 2}, {N / 2, N}}, dir + "/pages-1.img", &pages_fd)});
  CHECK(engine.set_tasks(2, tasks, wire::Format::V24) == 0);
  CHECK(engine.set_tasks(2, tasks, wire::Format::V24) == -EALREADY);
  std::vector<size_t> pages(N);
  for (size_t p = 0; p < N; p++) pages[p] = p;
  std::atomic<int> bad{0};
  touch_all(r, pages, 2, [&](size_t p, const uint8_t* page) { return page_matches(page, r.addr(p)); }, &bad);
  CHECK(bad.load() == 0);
  close(sock);
  const EngineState end = wait_end(engine, 30);
  if (end != EngineState::kDone) std::fprintf(stderr, "deferred: %s %s\n", engine_state_name(end), engine.error().c_str());
  CHECK(end == EngineState::kDone);
  engine.join();
  EngineStats s = engine.stats();
  print_stats("deferred tasks", s);
  CHECK(s.summary.pages_total == N);
  CHECK(installed(s) == N);
  CHECK(events.count(EngineEvent::Kind::kTask) == 1 && events.count(EngineEvent::Kind::kZombie) == 1);
  CHECK(events.count(EngineEvent::Kind::kRestoreFinished) == 1);
  munmap(r.base, N * P);
  close(pages_fd);

  // Not deferred: set_tasks() is refused.
  FaultEngineConfig plain = engine_config();
  plain.work_dir = make_dir();
  plain.nr_tasks = 1;
  FaultEngine not_deferred(plain);
  CHECK(not_deferred.start() == 0);
  CHECK(not_deferred.set_tasks(1, {}, wire::Format::V24) == -EINVAL);
  not_deferred.stop();

  // Deferred, bad ranges given after the restore connected: the engine fails with the reason.
  FaultEngineConfig bad_cfg = engine_config();
  bad_cfg.work_dir = make_dir();
  bad_cfg.defer_tasks = true;
  bad_cfg.source = FaultEngineConfig::Source::kRemote;  // never connected: the ranges fail first
  bad_cfg.address = "127.0.0.1";
  bad_cfg.port = 9;
  Events bad_events;
  FaultEngine bad_engine(bad_cfg, [&](const EngineEvent& e) { bad_events.add(e); });
  CHECK(bad_engine.start() == 0);
  int bad_sock = handshake::connect_socket(bad_engine.socket_path());
  CHECK(bad_sock >= 0);
  FaultEngineConfig::Run a, b;
  a.img_start = 0x10000;
  a.nr_pages = 4;
  b.img_start = 0x12000;
  b.nr_pages = 4;
  CHECK(bad_engine.set_tasks(1, {{1, {a, b}}}, wire::Format::V32) == 0);
  CHECK(wait_end(bad_engine, 10) == EngineState::kFailed);
  bad_engine.join();
  if (bad_engine.error().find("overlap") == std::string::npos) std::fprintf(stderr, "deferred bad: %s\n", bad_engine.error().c_str());
  CHECK(bad_engine.error().find("overlap") != std::string::npos);
  CHECK(bad_events.failure().find("overlap") != std::string::npos);
  close(bad_sock);
}

// --drain-start: for that long after RSTF the drain's window is the faulting one (the restored tasks' first
// faults queue behind little), then the full one. No task faults here: the window is the drain's own.
static uint64_t drain_window_after_rstf(int drain_start_ms, uint64_t* install_slices = nullptr) {
  const size_t N = 8 * 1024 * 1024 / P;
  const std::string dir = make_dir();
  Region r = make_region(N);
  int pages_fd = -1;
  std::vector<FaultEngineConfig::Run> engine_runs = write_pages(r, {{0, N}}, dir + "/pages-1.img", &pages_fd);
  auto index = std::make_shared<PageIndex>(P);
  const int file = index->add_file(dir + "/pages-1.img");
  CHECK(file >= 0);
  std::vector<PageRun> server_runs;
  for (const auto& er : engine_runs) {
    PageRun pr;
    pr.vaddr = er.img_start;
    pr.nr_pages = er.nr_pages;
    pr.flags = wire::PE_LAZY | wire::PE_PRESENT;
    pr.file = file;
    pr.file_offset = er.file_offset;
    server_runs.push_back(pr);
  }
  CHECK(index->add_task(556, server_runs) == 0);
  PageServerConfig scfg = server_config();
  scfg.session.format = wire::Format::V32;
  scfg.single_session = true;
  PageServer server(scfg, index, [](const ServerEvent&) {});
  uint16_t port = 0;
  CHECK(server.listen("127.0.0.1", 0, &port) == 0);
  CHECK(server.start() == 0);
  FaultEngineConfig cfg = engine_config();
  cfg.work_dir = dir;
  cfg.nr_tasks = 1;
  for (auto& er : engine_runs) er.fd = -1;
  cfg.tasks.push_back({556, engine_runs});
  cfg.source = FaultEngineConfig::Source::kRemote;
  cfg.address = "127.0.0.1";
  cfg.port = port;
  cfg.format = wire::Format::V32;
  cfg.bg_rate_bytes = 16 * 1024 * 1024;  // 8 MiB take about half a second: the window is read while it runs
  cfg.drain_start_ms = drain_start_ms;
  FaultEngine engine(cfg);
  CHECK(engine.start() == 0);
  int sock = handshake::connect_socket(engine.socket_path());
  CHECK(sock >= 0);
  CHECK(handshake::send_task(sock, 556, r.uffd) == 0);
  CHECK(handshake::send_finished(sock) == 0);
  close(r.uffd);
  close(sock);
  // The window is published with the drain's first request, after RSTF.
  uint64_t window = 0;
  for (int i = 0; i < 2000 && window == 0; i++) {
    window = engine.stats().bg_window_bytes;
    if (window == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EngineStats during = engine.stats();
  CHECK(during.summary.pages_background < N);  // still draining when read
  window = during.bg_window_bytes;
  CHECK(wait_end(engine, 30) == EngineState::kDone);
  engine.join();
  CHECK(engine.stats().summary.pages_background == N);
  if (install_slices) *install_slices = engine.stats().install_slices;
  bool all = true;
  for (size_t p = 0; p < N; p++) all &= page_matches(r.base + p * P, r.addr(p));
  CHECK(all);
  server.request_stop(1000);
  server.join();
  munmap(r.base, N * P);
  close(pages_fd);
  std::printf("drain window 50 ms after RSTF with --drain-start %d ms: %lu bytes\n", drain_start_ms, (unsigned long)window);
  return window;
}

static void test_drain_start() {
  const FaultEngineConfig cfg = engine_config();
  CHECK(drain_window_after_rstf(10000) == cfg.bg_in_flight_bytes_faulting);
  uint64_t slices = 0;
  CHECK(drain_window_after_rstf(0, &slices) >= cfg.bg_in_flight_bytes);
  // With no faults the drain's requests double to 1 MiB: each such reply is installed 128 KiB per loop pass (the
  // rest left to later passes, so that a fault read meanwhile waits behind one slice), and every page verified.
  std::printf("drain reply parts left to a later pass: %lu\n", (unsigned long)slices);
  CHECK(slices > 0);
}

int main() {
  alarm(120);  // never hang a test run
  setvbuf(stdout, nullptr, _IONBF, 0);
  test_local_full();
  test_local_faults_only();
  test_local_rate_cap();
  test_fork();
  test_remote(wire::Format::V24);
  test_remote(wire::Format::V32);
  test_drain_start();
  expect_engine_failure("page server hang-up", true, 30000, "page server");
  expect_engine_failure("page server stall", false, 300, "stalled");
  test_handshake_failures();
  test_deferred_tasks();
  check_report();
  return 0;
}
