// Relay staging's pull engine: lazyd --page-server as the lazy client of a `criu dump --lazy-pages --address
// 127.0.0.1 --port P` on the same host (docs/protocol.md §1.6, §1.7). It pulls every lazy page of the frozen tasks
// into a RelayStore with large pipelined GETs, fetches the pages a waiting restore needs ahead of the bulk, and
// only once it holds every lazy page (counted per task) sends CLOSE, so the dump ends with success and kills the
// originals. Every other end is a reset (PageClient: SO_LINGER 0 until CLOSE is answered): the dump fails and
// resumes the tasks, and the store is marked incomplete.
//
// Created on any thread by start() (connect, layout, memory charge); from then on driven by the page server's
// thread like a session: it watches fd() and calls on_ready(); the counters are atomics readable anywhere.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "lazy/page_client.h"
#include "net/tls_context.h"
#include "staging/relay_store.h"
#include "wire/wire.h"

namespace lazyd {

// Every field is set by the caller (the binding from lazyd's flags, a test).
struct RelayOptions {
  std::string host;
  uint16_t port = 0;
  int connect_timeout_ms = 0;
  wire::Format format = wire::Format::Unknown;
  std::shared_ptr<const TlsContext> tls;  // null: plain TCP
  std::vector<RelayTask> tasks;
  uint64_t request_pages = 0;   // pages per bulk GET
  uint64_t inflight_bytes = 0;  // bulk bytes requested and not yet received
  int stall_timeout_ms = 0;     // no byte for this long with requests outstanding: the relay fails
  uint64_t page_size = 4096;
  std::shared_ptr<MemoryBudget> budget;
  bool hold_by_reference = true;  // plain TCP: keep the pages in pipes, uncopied (staging/relay_store.h)
  uint64_t max_pipes = 0;         // the store's pipes at most (0: its default, from RLIMIT_NOFILE)
  // Hold the CLOSE once every page is held, until release() (lazyd migrate: the point of no return is the
  // destination's restore, not the end of the pull). Held, the dump keeps the tasks frozen; abort() still resets.
  bool hold_close = false;
};

class Relay {
 public:
  enum class Status { kPulling, kDone, kFailed };

  // Connects to the dump's page server, lays the store out and charges it to the budget. On failure returns null
  // with *error one line (and *err a negative errno); a connection already made is reset, so the dump fails and
  // resumes the tasks.
  static std::unique_ptr<Relay> start(RelayOptions options, std::string* error, int* err);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  int fd() const { return client_ ? client_->fd() : -1; }
  bool wants_write() const;
  // The socket is ready (or the caller just wants the relay to make progress): drives the TLS handshake, reads
  // replies, sends requests, and ends the pull (CLOSE) once every page is held.
  Status on_ready();
  // Periodic: the stall timeout (and the TLS handshake's).
  Status check_timeouts();
  // A restore waits for pid's pages from vaddr (nr_pages of them, clamped at the entry end): ask for the ones not
  // asked for yet, ahead of the bulk. Returns like on_ready().
  Status demand(uint64_t pid, uint64_t vaddr, uint64_t nr_pages);
  // Ends the relay as failed (reset) with message, unless it already ended.
  Status abort(const std::string& message);
  // hold_close: the CLOSE may go to the dump — now if every page is held, else as soon as they are.
  Status release();
  // hold_close: every lazy page is held and the CLOSE waits for release().
  bool held() const { return held_; }

  Status status() const { return status_; }
  // "host:port" of the dump's page server, for messages.
  std::string peer() const { return options_.host + ":" + std::to_string(options_.port); }
  const std::string& error() const { return error_; }
  const std::shared_ptr<RelayStore>& store() const { return store_; }
  uint64_t pages_held() const { return store_->pages_held(); }
  uint64_t pages_total() const { return store_->pages_total(); }
  uint64_t bytes_held() const { return store_->pages_held() * options_.page_size; }
  // From start() to now, or to the CLOSE answered / the failure.
  uint64_t elapsed_ms() const;
  // Counters for measurements: demand GETs sent, bulk GETs sent, replies shorter than asked.
  uint64_t demand_requests() const { return demand_requests_; }
  uint64_t bulk_requests() const { return bulk_requests_; }
  uint64_t short_replies() const { return short_replies_; }

 private:
  explicit Relay(RelayOptions options);
  // One contiguous run of the layout: pages [first, first + nr_pages) are pid's from vaddr.
  struct Segment {
    uint64_t first = 0;
    uint64_t nr_pages = 0;
    uint64_t pid = 0;
    uint64_t vaddr = 0;
    size_t task = 0;
  };
  struct Demand {
    uint64_t pid, vaddr, nr_pages;
  };
  // reset: the connection is (being) reset, so the dump resumes the tasks; false once CLOSE went out.
  Status fail(std::string message, bool reset = true);
  Status pump();
  int submit(uint64_t first, uint64_t count, bool demand);
  int submit_demands();
  int submit_bulk();
  int take_replies(std::vector<PageReply>& replies);
  const Segment* segment_of(uint64_t page) const;
  Status finish();
  Status closed(int rc, int32_t answer);

  RelayOptions options_;
  std::unique_ptr<PageClient> client_;
  std::shared_ptr<RelayStore> store_;
  std::vector<Segment> segments_;        // in layout order
  std::vector<uint64_t> task_pages_;     // lazy pages per task (options_.tasks order)
  std::vector<uint64_t> task_received_;  // pages received per task
  std::vector<uint8_t> asked_;           // per page of the layout: requested already
  std::deque<Demand> demands_;           // waiting for the TLS handshake
  bool handshaking_ = false;
  bool closing_ = false;                 // CLOSE sent (plain TCP): its answer is awaited on the event loop
  bool held_ = false;                    // hold_close: every page held, the CLOSE waits for release()
  bool released_ = false;                // release() came: the CLOSE is no longer held
  uint64_t bulk_cursor_ = 0;             // first page the bulk pull has not asked for
  uint64_t bulk_in_flight_ = 0;          // bytes
  uint64_t started_ns_ = 0;
  std::atomic<uint64_t> ended_ns_{0};
  Status status_ = Status::kPulling;
  std::string error_;
  uint64_t demand_requests_ = 0;
  uint64_t bulk_requests_ = 0;
  uint64_t short_replies_ = 0;
};

}  // namespace lazyd
