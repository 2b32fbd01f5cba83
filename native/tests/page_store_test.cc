// The memfd store (staging's PageStore): every PageStore case (page_store_checks.h) in its three fill/serve
// modes, its kernel resources (one sealed memfd), and the pagemap keys.
#include <fcntl.h>

#include "check.h"
#include "page_store_checks.h"
#include "staging/memfd_store.h"

using namespace lazyd;
using namespace lazyd::store_checks;

namespace {

StoreKind memfd_kind(const char* name, MemfdStoreOptions::Fill fill, uint64_t copy_max) {
  StoreKind kind;
  kind.name = name;
  kind.make = [fill, copy_max](const StoreLimits& limits) -> std::unique_ptr<PageStore> {
    MemfdStoreOptions o;
    o.limits = limits;
    o.fill = fill;
    o.copy_max = copy_max;
    o.grow_step = 64 * 1024;  // small, so growth (mremap) happens often
    auto store = std::make_unique<MemfdStore>(o);
    CHECK(store->init_error() == 0);
    return store;
  };
  kind.check_sealed_resources = [](PageStore& store, uint64_t, uint64_t bytes) {
    const StoreResources r = store.resources();
    CHECK(r.fds == 1);
    CHECK(r.file_bytes == bytes);
    int seals = fcntl(static_cast<MemfdStore&>(store).memfd(), F_GET_SEALS);
    CHECK((seals & (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK)) == (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK));
  };
  return kind;
}

void test_keys() {
  PageKey key;
  CHECK(key_from_dst_id(0x101, &key) && key == pid_key(1));
  for (uint64_t type : {1, 10, 11, 16, 17}) CHECK(key_from_dst_id((42 << 8) | type, &key) && key == pid_key(42));
  for (uint64_t type : {2, 27, 28, 29, 32, 33, 34}) CHECK(key_from_dst_id((42 << 8) | type, &key) && key == shmem_key(42));
  for (uint64_t type : {0, 3, 9, 12, 26, 30, 35, 255}) CHECK(!key_from_dst_id((42 << 8) | type, &key));
  CHECK(key_name(pid_key(7)) == "pid 7");
  CHECK(key_name(shmem_key(9)) == "shmem 9");
}

}  // namespace

int main() {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  test_keys();
  run_store_cases(memfd_kind("memfd/read", MemfdStoreOptions::Fill::kRead, 4096));
  run_store_cases(memfd_kind("memfd/splice", MemfdStoreOptions::Fill::kSplice, 0));
  run_store_cases(memfd_kind("memfd/copy", MemfdStoreOptions::Fill::kRead, UINT64_MAX));
  return check_report();
}
