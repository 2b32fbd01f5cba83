// The benchmark's pipe store (pipe_store.h): every PageStore case (native/tests/page_store_checks.h) for pipes of
// 16 KiB to 1 MiB, its fd accounting (2 per pipe while filling, 1 once sealed), and byte-exact serving from every
// page offset of a pipe.
#include "check.h"
#include "page_store_checks.h"
#include "pipe_store.h"

using namespace lazyd;
using namespace lazyd::store_checks;

namespace {

StoreKind pipe_kind(const char* name, uint64_t pipe_bytes) {
  StoreKind kind;
  kind.name = name;
  kind.make = [pipe_bytes](const StoreLimits& limits) -> std::unique_ptr<PageStore> {
    PipeStoreOptions o;
    o.limits = limits;
    o.pipe_bytes = pipe_bytes;
    return std::make_unique<PipeStore>(o);
  };
  kind.check_sealed_resources = [](PageStore& store, uint64_t fds_before, uint64_t bytes) {
    // While filling: 1 fd per pipe, plus the write end of the pipe being filled (a full one's goes at once), plus
    // /dev/null; 1 per pipe once sealed.
    const StoreResources r = store.resources();
    CHECK(fds_before == r.pipes + 2);
    CHECK(r.fds == r.pipes + 1);
    const uint64_t pipe_bytes = static_cast<PipeStore&>(store).pipe_bytes();
    CHECK(r.pipes >= (bytes + pipe_bytes - 1) / pipe_bytes);
  };
  return kind;
}

// Serving from the middle of a pipe: every page offset of a 1 MiB pipe (and of its neighbours) is exact.
void test_pipe_offsets() {
  for (uint64_t pipe_bytes : {64ull << 10, 256ull << 10, 1ull << 20, 4ull << 20}) {
    if (pipe_bytes > pipe_max_size()) continue;
    PipeStoreOptions o;
    o.pipe_bytes = pipe_bytes;
    PipeStore store(o);
    const uint64_t pages = 2 * pipe_bytes / kPage + 5;
    const std::string data = pattern(1000, pages, 5);
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    fill(store, pid_key(1), {{0x7f0000000000, pages, wire::PE_PRESENT | wire::PE_LAZY}}, data, p[0], p[1]);
    close(p[0]);
    close(p[1]);
    CHECK(store.seal() == 0);
    CHECK(store.resources().pipes == 3);
    const uint64_t step = pipe_bytes >= (1 << 20) ? 7 : 1;
    for (uint64_t page = 0; page < pages; page += step) {
      for (uint64_t len : {1ull, 5ull}) {
        const uint64_t want = std::min(len, pages - page);
        std::string got = collect([&](int fd) {
          CHECK(store.serve(pid_key(1), 0x7f0000000000 + page * kPage, len, fd) == static_cast<int64_t>(want));
        });
        CHECK(got == data.substr(page * kPage, want * kPage));
      }
    }
    printf("  pipe offsets exact in %llu KiB pipes (capacity %llu KiB)\n",
           static_cast<unsigned long long>(pipe_bytes >> 10),
           static_cast<unsigned long long>(store.pipe_capacity() >> 10));
  }
}

}  // namespace

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  run_store_cases(pipe_kind("pipe/16K", 16 << 10));
  run_store_cases(pipe_kind("pipe/64K", 64 << 10));
  run_store_cases(pipe_kind("pipe/256K", 256 << 10));
  run_store_cases(pipe_kind("pipe/1M", 1 << 20));
  test_pipe_offsets();
  return check_report();
}
