// The pages of one staged checkpoint (diskless staging: `criu dump --page-server` uploads into lazyd's memory,
// lazyd serves them lazily to any number of restores). A store is filled once, entry by entry in upload order,
// straight from the upload socket, then sealed and served many times: serving never consumes a page.
//
// The metadata (per pagemap: the entries with their PE_* flags, in order) lives here; where the bytes live is
// up to the subclass: MemfdStore (one memfd, sendfile), or the page-store benchmark's PipeStore (page pipes, tee +
// splice, as CRIU keeps them: bench/page-store/pipe_store.h). Every present page has a position in the store's
// byte stream: the concatenation of all payloads in arrival order, like a pages-N.img shared by every pagemap of
// the upload (docs/protocol.md §2.4).
//
// Not thread-safe while filling. Once sealed, lookup() and send() are const and may run on any thread, each
// with its own ServeScratch.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>
#include <unordered_map>
#include <vector>

#include "wire/lookup_result.h"
#include "wire/wire.h"

namespace lazyd {

// A pagemap's identity: (id << 8) | canonical type, i.e. the upload dst_id with CRIU's legacy type numbers
// folded into PS_TYPE_PID / PS_TYPE_SHMEM (§1.4). A GET's dst_id is the bare pid: look it up with pid_key().
using PageKey = uint64_t;

constexpr PageKey pid_key(uint64_t pid) { return (pid << wire::PS_TYPE_BITS) | wire::PS_TYPE_PID; }
constexpr PageKey shmem_key(uint64_t shmid) { return (shmid << wire::PS_TYPE_BITS) | wire::PS_TYPE_SHMEM; }
constexpr uint64_t key_id(PageKey key) { return key >> wire::PS_TYPE_BITS; }
constexpr uint32_t key_type(PageKey key) { return static_cast<uint32_t>(key & wire::PS_TYPE_MASK); }

// The key of a GET's dst_id (a bare pid). Returns false for a value that cannot be a pid (> PID_MAX_LIMIT),
// which pid_key() would otherwise truncate into another pid's key.
bool key_from_get_pid(uint64_t pid, PageKey* key);
// Folds an upload dst_id into a key. Returns false for a type CRIU does not know ("Unknown pagemap type").
bool key_from_dst_id(uint64_t dst_id, PageKey* key);
// "pid 1" / "shmem 42"
std::string key_name(PageKey key);

// Error codes of the store (negative errno values, like every other failure it returns).
constexpr int kStoreCapExceeded = -EDQUOT;  // the memory cap would be exceeded: the upload must fail
constexpr int kStoreBadEntry = -EINVAL;     // vaddr not page-aligned, nr_pages 0, range wraps, bad flags
constexpr int kStoreOutOfOrder = -ERANGE;   // entry starts below the end of the key's previous entry
constexpr int kStoreTooBig = -E2BIG;        // nr_pages above StoreLimits::max_entry_pages
constexpr int kStoreBusy = -EBUSY;          // an entry's payload is still expected / nothing expected
constexpr int kStoreSealed = -EROFS;        // filling a sealed store
constexpr int kStoreTruncated = -EPIPE;     // append(): the source ended before the payload did
constexpr int kStoreVoid = -ESTALE;         // serving: the store's pages were dropped (a void relay), even mid-reply
const char* store_error_text(int code);

// A byte budget shared by every store of the daemon (staged checkpoints and uploads in progress).
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit) : limit_(limit) {}
  // All or nothing. Thread-safe.
  bool try_reserve(uint64_t bytes);
  void release(uint64_t bytes);
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

struct StoreLimits {
  std::shared_ptr<MemoryBudget> budget;  // null: the store gets a budget of its own of max_bytes
  uint64_t max_bytes = 1ull << 30;
  uint64_t max_entry_pages = 1ull << 18;  // CRIU's entries are at most one page-pipe buffer (a pipe) long
};

// One pagemap entry as uploaded. data_offset is the position of its bytes in the store's byte stream
// (meaningful only with PE_PRESENT).
struct StoreEntry {
  uint64_t vaddr = 0;
  uint64_t nr_pages = 0;
  uint32_t flags = 0;
  uint64_t data_offset = 0;
};

// What lookup() found: nr_pages is clamped to the end of the covering entry (as CRIU clamps to its iovec).
struct StoreSpan {
  uint64_t nr_pages = 0;
  uint32_t flags = 0;        // of the covering entry
  uint64_t data_offset = 0;  // of the first requested page in the byte stream
  uint64_t bytes = 0;        // nr_pages * page size
};

// Where the kernel resources go (the fd cost of a pipe store is 2 per pipe while filling, 1 once sealed).
struct StoreResources {
  uint64_t fds = 0;
  uint64_t pipes = 0;
  uint64_t file_bytes = 0;  // memfd size
};

// Per-connection (or per-thread) serving state, for a store that moves a reply through a pipe of its own before
// it reaches the output (a tee-based store such as the benchmark's pipe store; the memfd store needs none): the
// pipe, and how many bytes of the current reply it holds that were not yet written. One reply at a time.
class ServeScratch {
 public:
  ServeScratch() = default;
  ~ServeScratch();
  ServeScratch(const ServeScratch&) = delete;
  ServeScratch& operator=(const ServeScratch&) = delete;

  uint64_t pending() const { return pending_; }
  // Drops the pending bytes of an abandoned reply. Returns 0 or -errno.
  int reset();
  int fds() const { return rd_ < 0 ? 0 : 2; }

  // For stores: a pipe of at least this capacity (0 or -errno), its ends, and the pending byte count.
  int ensure(size_t capacity);
  int read_fd() const { return rd_; }
  int write_fd() const { return wr_; }
  void set_pending(uint64_t bytes) { pending_ = bytes; }
  void consumed(uint64_t bytes) { pending_ -= bytes; }

 private:
  int rd_ = -1;
  int wr_ = -1;
  size_t capacity_ = 0;
  uint64_t pending_ = 0;
};

class PageStore {
 public:
  virtual ~PageStore();
  PageStore(const PageStore&) = delete;
  PageStore& operator=(const PageStore&) = delete;

  virtual const char* kind() const = 0;  // "pipe" / "memfd"
  uint64_t page_size() const { return page_size_; }

  // ---- Filling, in upload order ----

  // Records a pagemap (CRIU's OPEN2 creates an empty pagemap even if no entry follows). Idempotent.
  int open_key(PageKey key);
  // Starts an entry (opening its key if needed). With PE_PRESENT its nr_pages * page size bytes are
  // reserved against the budget and must then be fed with receive()/receive_bytes(); the entry becomes
  // visible only once complete. Without PE_PRESENT (PE_PARENT holes, PE_LAZY without data) it is metadata
  // only and complete at once. Returns 0 or a kStore* code.
  int begin_entry(PageKey key, uint64_t vaddr, uint64_t nr_pages, uint32_t flags);
  // Payload bytes the current entry still expects.
  uint64_t pending_bytes() const { return pending_left_; }
  // Moves up to max (capped at pending_bytes()) payload bytes from fd (a socket or a pipe; non-blocking or
  // not) into the store without reading a byte more. Returns the bytes moved, 0 at EOF, -EAGAIN, or -errno.
  ssize_t receive(int fd, uint64_t max);
  // The same from memory (bytes a caller already read, e.g. after TLS).
  ssize_t receive_bytes(const void* data, size_t len);
  // Convenience: begin_entry + receive until complete, waiting (poll) when fd has nothing yet.
  // Returns 0, kStoreTruncated when fd ends early, or another error.
  int append(PageKey key, uint64_t vaddr, uint64_t nr_pages, uint32_t flags, int source_fd);
  // Ends filling (pipe store: closes the write ends; memfd store: seals the memfd read-only).
  int seal();
  bool sealed() const { return sealed_; }

  // ---- Reading ----

  // found / unknown key / no entry covers vaddr / entry without data (/ not lazy, with lazy_only).
  LookupResult lookup(PageKey key, uint64_t vaddr, uint64_t nr_pages, StoreSpan* span, bool lazy_only = false) const;
  // Pagemaps in the order they were opened, and each one's entries in order (for writing pagemap images).
  const std::vector<PageKey>& keys() const { return key_order_; }
  const std::vector<StoreEntry>* entries(PageKey key) const;

  // Writes the next bytes of span (starting `done` bytes into it) to out_fd (a socket, pipe or file) without
  // consuming them from the store. Non-blocking on a non-blocking out_fd. Returns bytes written (> 0),
  // -EAGAIN when out_fd is full, or -errno. Call until done == span.bytes.
  virtual ssize_t send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const = 0;
  // The same bytes copied into buf (at most len): for TLS, where pages are encrypted in user space (§1.9).
  // Returns bytes copied (> 0) or -errno. Call until done == span.bytes.
  virtual ssize_t copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const = 0;
  // span's bytes in a read-only mapping of a sealed store, which never change (the lazyd link's checksums are
  // computed there while the bytes go out zero-copy, docs/protocol.md §7.4); nullptr where the store has none.
  virtual const uint8_t* view(const StoreSpan& span) const { return nullptr; }
  // Convenience: lookup + send all of it, waiting (poll) on a full out_fd. Returns the pages written
  // (clamped), or a negative code: -ENOENT unknown key, -ENODATA not stored / no data, or -errno.
  // Uses a scratch owned by the store: one caller at a time.
  int64_t serve(PageKey key, uint64_t vaddr, uint64_t nr_pages, int out_fd) const;

  // Writes the bytes of every PE_PRESENT entry of key, in pagemap order, to out_fd: the pages-<id>.img of
  // that pagemap (§2.4). Without include_lazy, PE_LAZY entries are left out (the image set of a
  // `dump --lazy-pages`, whose lazy entries the pagemap then lists as PE_LAZY only). Returns the bytes
  // written, or a negative code as serve().
  int64_t write_pages(PageKey key, int out_fd, bool include_lazy) const;

  // ---- Stores filled out of order (staging/relay_store.h) ----

  // How many pages of span, from its first, can be sent now: all of them in a store filled in upload order.
  virtual uint64_t pages_ready(const StoreSpan& span) const { return span.nr_pages; }
  // Why pages that are not ready never will be ("" while they still may arrive).
  virtual std::string missing_reason() const { return ""; }

  // ---- Accounting ----
  uint64_t bytes_held() const { return data_end_; }          // payload bytes received
  uint64_t bytes_reserved() const { return reserved_; }      // held + promised to the entry in progress
  const MemoryBudget& budget() const { return *budget_; }
  virtual StoreResources resources() const = 0;
  uint64_t entry_count() const { return entry_count_; }

 protected:
  PageStore(uint64_t page_size, const StoreLimits& limits);
  // A store whose layout is known before any byte arrives: records every entry at once, their bytes at
  // consecutive positions of the byte stream in the order given, and reserves the bytes of the PE_PRESENT ones
  // against the budget in one go (all or nothing). Entries of a key must come in vaddr order without overlap.
  // Only on an empty store. Returns 0 or a kStore* code (kStoreCapExceeded: nothing was reserved).
  struct LayoutEntry {
    PageKey key = 0;
    uint64_t vaddr = 0;
    uint64_t nr_pages = 0;
    uint32_t flags = 0;
  };
  int preset_layout(const std::vector<LayoutEntry>& layout);
  // Append up to len bytes at the end of the byte stream (data_end()).
  virtual ssize_t put_from_fd(int fd, uint64_t len) = 0;
  virtual ssize_t put_bytes(const void* data, size_t len) = 0;
  virtual int on_seal() = 0;
  uint64_t data_end() const { return data_end_; }

 private:
  void finish_entry();

  const uint64_t page_size_;
  StoreLimits limits_;
  std::shared_ptr<MemoryBudget> budget_;
  std::unordered_map<PageKey, std::vector<StoreEntry>> entries_;
  std::vector<PageKey> key_order_;
  bool has_pending_ = false;
  PageKey pending_key_ = 0;
  StoreEntry pending_;
  uint64_t pending_left_ = 0;
  uint64_t data_end_ = 0;
  uint64_t reserved_ = 0;
  uint64_t entry_count_ = 0;
  bool sealed_ = false;
  mutable std::unique_ptr<ServeScratch> own_scratch_;
};

// Reads /proc/sys/fs/pipe-max-size (bytes); 1 MiB if unreadable.
size_t pipe_max_size();

}  // namespace lazyd
