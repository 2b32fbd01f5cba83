// The uffd wrappers against a real userfaultfd in this process: API, COPY (partial counts, EEXIST), ZEROPAGE,
// WAKE with DONTWAKE, PAGEFAULT / REMOVE / UNMAP / REMAP events, UNREGISTER.
#include "kernel/uffd.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "check.h"

using namespace lazyd;


static const uint64_t P = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));

static int wait_events(int fd, uffd_msg* msgs, size_t max, int timeout_ms) {
  pollfd pfd{fd, POLLIN, 0};
  if (poll(&pfd, 1, timeout_ms) <= 0) return 0;
  return uffd::read_events(fd, msgs, max);
}

int main() {
  alarm(60);  // never hang a test run
  int fd = uffd::open_fd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    std::fprintf(stderr, "cannot open a userfaultfd: %s (needs root or /dev/userfaultfd)\n", strerror(-fd));
    return 1;
  }
  uint64_t features = 0, ioctls = 0;
  CHECK(uffd::api(fd, uffd::kNonCoopFeatures, &features, &ioctls) == 0);
  CHECK((features & uffd::kNonCoopFeatures) == uffd::kNonCoopFeatures);
  // A second UFFDIO_API on the same fd is refused.
  CHECK(uffd::api(fd, 0, nullptr, nullptr) < 0);

  constexpr size_t N = 32;
  uint8_t* region = static_cast<uint8_t*>(mmap(nullptr, N * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  CHECK(region != MAP_FAILED);
  const uint64_t base = reinterpret_cast<uint64_t>(region);
  uint64_t reg_ioctls = 0;
  CHECK(uffd::register_range(fd, base, N * P, UFFDIO_REGISTER_MODE_MISSING, &reg_ioctls) == 0);
  CHECK(reg_ioctls & (1ull << _UFFDIO_COPY));
  CHECK(reg_ioctls & (1ull << _UFFDIO_ZEROPAGE));
  CHECK(reg_ioctls & (1ull << _UFFDIO_WAKE));

  std::vector<uint8_t> src(8 * P);
  for (size_t i = 0; i < src.size(); i++) src[i] = static_cast<uint8_t>(i * 7 + 3);

  // COPY of 4 pages.
  uffd::CopyResult r = uffd::copy(fd, base, src.data(), 4 * P, false);
  CHECK(r.err == 0 && r.copied == 4 * P);
  CHECK(std::memcmp(region, src.data(), 4 * P) == 0);
  // Over installed pages: EEXIST at once, nothing copied.
  r = uffd::copy(fd, base + 2 * P, src.data(), 2 * P, false);
  CHECK(r.err == -EEXIST && r.copied == 0);
  CHECK(uffd::classify(r.err) == uffd::ErrorClass::kExists);
  // Partial: pages 4,5 go in, page 6 is already there (the kernel says EAGAIN with a count; the wrapper goes on and
  // reports the real EEXIST).
  CHECK(uffd::copy(fd, base + 6 * P, src.data(), P, false).err == 0);
  r = uffd::copy(fd, base + 4 * P, src.data() + 4 * P, 4 * P, false);
  CHECK(r.err == -EEXIST && r.copied == 2 * P);
  CHECK(std::memcmp(region + 4 * P, src.data() + 4 * P, 2 * P) == 0);
  // Then the rest after the existing page.
  r = uffd::copy(fd, base + 7 * P, src.data() + 7 * P, P, false);
  CHECK(r.err == 0 && r.copied == P);

  // ZEROPAGE, and again (EEXIST).
  r = uffd::zeropage(fd, base + 8 * P, 2 * P, false);
  CHECK(r.err == 0 && r.copied == 2 * P);
  CHECK(region[8 * P] == 0 && region[10 * P - 1] == 0);
  r = uffd::zeropage(fd, base + 9 * P, P, false);
  CHECK(r.err == -EEXIST);

  // Unaligned or outside any registered range.
  CHECK(uffd::copy(fd, base + 1, src.data(), P, false).err == -EINVAL);
  uint8_t* other = static_cast<uint8_t*>(mmap(nullptr, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  r = uffd::copy(fd, reinterpret_cast<uint64_t>(other), src.data(), P, false);
  CHECK(r.err == -ENOENT);
  CHECK(uffd::classify(r.err) == uffd::ErrorClass::kNoEnt);
  munmap(other, P);

  // Nothing pending.
  uffd_msg msgs[8];
  CHECK(uffd::read_events(fd, msgs, 8) == 0);

  // A fault from another thread; install with DONTWAKE: the thread stays blocked until WAKE.
  std::atomic<int> seen{-1};
  std::thread reader([&] { seen = region[12 * P + 5]; });
  int n = wait_events(fd, msgs, 8, 5000);
  CHECK(n == 1);
  CHECK(msgs[0].event == UFFD_EVENT_PAGEFAULT);
  CHECK((msgs[0].arg.pagefault.address & ~(P - 1)) == base + 12 * P);
  r = uffd::copy(fd, base + 12 * P, src.data(), P, true);
  CHECK(r.err == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(seen.load() == -1);
  CHECK(uffd::wake(fd, base + 12 * P, P) == 0);
  reader.join();
  CHECK(seen.load() == src[5]);

  // REMOVE: madvise(DONTNEED) blocks until the event is read, so it runs in a thread.
  std::thread madviser([&] { madvise(region, 2 * P, MADV_DONTNEED); });
  n = wait_events(fd, msgs, 8, 5000);
  CHECK(n == 1);
  CHECK(msgs[0].event == UFFD_EVENT_REMOVE);
  CHECK(msgs[0].arg.remove.start == base && msgs[0].arg.remove.end == base + 2 * P);
  madviser.join();
  CHECK(uffd::unregister_range(fd, base, 2 * P) == 0);
  CHECK(region[0] == 0 && region[2 * P - 1] == 0);  // plain zero-fill now, no fault
  CHECK(uffd::read_events(fd, msgs, 8) == 0);

  // REMAP: move pages 20..24 elsewhere. The kernel may also report the old range as UNMAPped; mremap returns only
  // once every event is read, so keep reading until it has.
  uint8_t* target = static_cast<uint8_t*>(mmap(nullptr, 4 * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  std::atomic<bool> moved{false};
  std::thread mover([&] {
    void* p = mremap(region + 20 * P, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_FIXED, target);
    if (p == MAP_FAILED) std::abort();
    moved = true;
  });
  std::vector<uffd_msg> seen_events;
  for (int i = 0; i < 500 && !moved.load(); i++) {
    n = wait_events(fd, msgs, 8, 10);
    for (int k = 0; k < n; k++) seen_events.push_back(msgs[k]);
  }
  mover.join();
  n = uffd::read_events(fd, msgs, 8);
  for (int k = 0; k < n; k++) seen_events.push_back(msgs[k]);
  CHECK(!seen_events.empty());
  CHECK(seen_events[0].event == UFFD_EVENT_REMAP);
  CHECK(seen_events[0].arg.remap.from == base + 20 * P);
  CHECK(seen_events[0].arg.remap.to == reinterpret_cast<uint64_t>(target));
  CHECK(seen_events[0].arg.remap.len == 4 * P);
  for (size_t k = 1; k < seen_events.size(); k++) {
    std::printf("after REMAP: %s\n", uffd::event_name(seen_events[k].event));
    CHECK(seen_events[k].event == UFFD_EVENT_UNMAP);
  }
  // The moved range is still registered at its new place.
  r = uffd::copy(fd, reinterpret_cast<uint64_t>(target), src.data(), P, false);
  CHECK(r.err == 0);
  CHECK(target[1] == src[1]);

  // UNMAP.
  std::thread unmapper([&] { munmap(region + 28 * P, 4 * P); });
  n = wait_events(fd, msgs, 8, 5000);
  CHECK(n == 1);
  CHECK(msgs[0].event == UFFD_EVENT_UNMAP);
  CHECK(msgs[0].arg.remove.start == base + 28 * P && msgs[0].arg.remove.end == base + 32 * P);
  unmapper.join();

  // Error classes.
  CHECK(uffd::classify(0) == uffd::ErrorClass::kOk);
  CHECK(uffd::classify(-EAGAIN) == uffd::ErrorClass::kRetry);
  CHECK(uffd::classify(-ESRCH) == uffd::ErrorClass::kGone);
  CHECK(uffd::classify(-ENOSPC) == uffd::ErrorClass::kGone);
  CHECK(uffd::classify(-ENOMEM) == uffd::ErrorClass::kFatal);
  CHECK(uffd::classify(-ENOMEM, true) == uffd::ErrorClass::kGone);
  CHECK(uffd::classify(-EINVAL) == uffd::ErrorClass::kFatal);
  CHECK(std::strcmp(uffd::event_name(UFFD_EVENT_FORK), "FORK") == 0);
  CHECK(std::strcmp(uffd::error_class_name(uffd::ErrorClass::kGone), "gone") == 0);

  close(fd);
  check_report();
  return 0;
}
