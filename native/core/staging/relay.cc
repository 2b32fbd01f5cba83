#include "staging/relay.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "util/clock.h"
#include "util/text.h"

namespace lazyd {
namespace {

// A request's cookie: its first page in the layout, and whether a waiting restore asked for it.
constexpr uint64_t kDemandBit = 1ull << 63;

// Replies taken per on_ready() before the page server's thread gets back to its sessions. One: each request a round
// sends wakes the dump's page server, which on these two cores preempts this thread for about 0.5 ms while it
// splices the next megabyte; with two rounds a priority GET waited behind 1.1 ms passes (docs/benchmarks.md).
constexpr int kRoundsPerWakeup = 1;

}  // namespace

Relay::Relay(RelayOptions options) : options_(std::move(options)), started_ns_(now_ns()) {}

Relay::~Relay() = default;  // the client resets the connection unless CLOSE was answered

std::unique_ptr<Relay> Relay::start(RelayOptions options, std::string* error, int* err) {
  const std::string peer = options.host + ":" + std::to_string(options.port);
  auto refuse = [&](int code, const std::string& why, bool connected) -> std::unique_ptr<Relay> {
    *err = code;
    *error = "cannot relay the dump at " + peer + ": " + why +
             (connected ? "; its connection was reset, so criu dump fails and resumes the tasks" : "");
    return nullptr;
  };
  if (options.format != wire::Format::V24 && options.format != wire::Format::V32) {
    return refuse(-EINVAL, "no wire format (24 or 32) given", false);
  }
  if (options.request_pages == 0 || options.inflight_bytes < options.page_size || options.stall_timeout_ms <= 0 ||
      !options.budget) {
    return refuse(-EINVAL, "requestPages, inflightBytes and stallTimeoutMs must be positive", false);
  }
  std::unordered_set<uint64_t> pids;
  for (const RelayTask& task : options.tasks) {
    if (!pids.insert(task.pid).second) return refuse(-EINVAL, "pid " + std::to_string(task.pid) + " is listed twice", false);
  }
  std::unique_ptr<Relay> relay(new Relay(std::move(options)));
  const RelayOptions& o = relay->options_;
  relay->client_ = std::make_unique<PageClient>(o.format, o.page_size);
  int rc = relay->client_->connect(o.host, o.port, o.connect_timeout_ms);
  if (rc < 0) return refuse(rc, relay->client_->error(), false);

  // TLS decrypts in user space: nothing to splice, so the pages are copied into the store's memfd.
  relay->store_ = std::make_shared<RelayStore>(o.page_size, o.budget, o.hold_by_reference && !o.tls, o.max_pipes);
  std::string why;
  rc = relay->store_->init(o.tasks, &why);
  if (rc < 0) return refuse(rc, why, true);  // relay (and its client) go: the connection is reset

  const uint64_t total = relay->store_->pages_total();
  relay->asked_.assign(total, 0);
  relay->task_pages_.assign(o.tasks.size(), 0);
  relay->task_received_.assign(o.tasks.size(), 0);
  for (size_t t = 0; t < o.tasks.size(); t++) {
    const std::vector<StoreEntry>* entries = relay->store_->entries(pid_key(o.tasks[t].pid));
    if (!entries) continue;
    for (const StoreEntry& e : *entries) {
      relay->segments_.push_back(Segment{e.data_offset / o.page_size, e.nr_pages, o.tasks[t].pid, e.vaddr, t});
      relay->task_pages_[t] += e.nr_pages;
    }
  }
  std::sort(relay->segments_.begin(), relay->segments_.end(),
            [](const Segment& a, const Segment& b) { return a.first < b.first; });
  if (o.tls) {
    rc = relay->client_->start_tls(o.tls, peer);
    if (rc < 0) return refuse(rc, relay->client_->error(), true);
    relay->handshaking_ = true;
  }
  return relay;
}

bool Relay::wants_write() const {
  if (!client_) return false;
  return handshaking_ ? client_->tls_wants_write() : client_->wants_write();
}

uint64_t Relay::elapsed_ms() const {
  const uint64_t end = ended_ns_.load(std::memory_order_relaxed);
  return ((end ? end : now_ns()) - started_ns_) / 1000000;
}

const Relay::Segment* Relay::segment_of(uint64_t page) const {
  auto after = std::upper_bound(segments_.begin(), segments_.end(), page,
                                [](uint64_t p, const Segment& s) { return p < s.first; });
  if (after == segments_.begin()) return nullptr;
  const Segment& s = *(after - 1);
  return page < s.first + s.nr_pages ? &s : nullptr;
}

Relay::Status Relay::fail(std::string message, bool reset) {
  if (status_ != Status::kPulling) return status_;
  status_ = Status::kFailed;
  ended_ns_.store(now_ns(), std::memory_order_relaxed);
  error_ = "relay from the dump at " + options_.host + ":" + std::to_string(options_.port) + " failed after " +
           std::to_string(store_->pages_held()) + " of " + std::to_string(store_->pages_total()) + " pages: " + message +
           (reset ? "; the dump's connection was reset, so criu dump fails and resumes the tasks" : "");
  client_.reset();  // SO_LINGER 0: a reset, never an EOF (docs/protocol.md §1.7)
  // After a reset the dump resumes the tasks: pages held by reference to their memory may change (relay_store.h).
  store_->finish(false, message, reset);
  return status_;
}

Relay::Status Relay::abort(const std::string& message) { return fail(message); }

Relay::Status Relay::release() {
  released_ = true;
  if (status_ != Status::kPulling) return status_;
  return pump();  // held: finish() now; still pulling: once the last page is in
}

// Sends GETs for [first, first + count), all inside one segment, into the store's own pages.
int Relay::submit(uint64_t first, uint64_t count, bool demand) {
  const Segment* s = segment_of(first);
  if (!s || first + count > s->first + s->nr_pages) return -ERANGE;
  PageRequest request;
  request.cookie = first | (demand ? kDemandBit : 0);
  request.pid = s->pid;
  request.img_vaddr = s->vaddr + (first - s->first) * options_.page_size;
  request.nr_pages = count;
  request.sink = store_.get();  // the reply's pages go straight to their place in the store
  request.sink_offset = first * options_.page_size;
  std::fill(asked_.begin() + static_cast<ptrdiff_t>(first), asked_.begin() + static_cast<ptrdiff_t>(first + count), 1);
  if (demand) demand_requests_++;
  else {
    bulk_requests_++;
    bulk_in_flight_ += count * options_.page_size;
  }
  return client_->submit(request);
}

int Relay::submit_demands() {
  while (!demands_.empty()) {
    const Demand d = demands_.front();
    demands_.pop_front();
    StoreSpan span;
    if (store_->lookup(pid_key(d.pid), d.vaddr, d.nr_pages, &span, true) != LookupResult::kFound) continue;
    const uint64_t first = span.data_offset / options_.page_size;
    uint64_t count = 0;
    while (count < span.nr_pages && !asked_[first + count]) count++;
    if (count == 0) continue;  // already on its way (or held)
    int rc = submit(first, count, true);
    if (rc < 0) return rc;
  }
  return 0;
}

int Relay::submit_bulk() {
  const uint64_t total = store_->pages_total();
  while (bulk_in_flight_ < options_.inflight_bytes) {
    while (bulk_cursor_ < total && asked_[bulk_cursor_]) bulk_cursor_++;
    if (bulk_cursor_ == total) return 0;
    const Segment* s = segment_of(bulk_cursor_);
    if (!s) return -ERANGE;
    const uint64_t end = std::min(s->first + s->nr_pages, bulk_cursor_ + options_.request_pages);
    uint64_t count = 0;
    while (bulk_cursor_ + count < end && !asked_[bulk_cursor_ + count]) count++;
    int rc = submit(bulk_cursor_, count, false);
    if (rc < 0) return rc;
    bulk_cursor_ += count;
  }
  return 0;
}

int Relay::take_replies(std::vector<PageReply>& replies) {
  for (const PageReply& reply : replies) {
    const bool demand = (reply.cookie & kDemandBit) != 0;
    const uint64_t first = reply.cookie & ~kDemandBit;
    if (!demand) bulk_in_flight_ -= reply.requested_pages * options_.page_size;
    const Segment* s = segment_of(first);
    if (!s || store_->mark_present(first, reply.nr_pages) < 0) {
      fail("a reply for pid " + std::to_string(s ? s->pid : 0) + " at " + hex(reply.img_vaddr) +
           " covers pages already held: the stream is out of step");
      return -EPROTO;
    }
    task_received_[s->task] += reply.nr_pages;
    if (reply.nr_pages < reply.requested_pages) {
      // The dump's server clamps a reply at the end of its page-pipe buffer (docs/protocol.md §1.6): ask again.
      short_replies_++;
      int rc = submit(first + reply.nr_pages, reply.requested_pages - reply.nr_pages, demand);
      if (rc < 0) {
        fail(client_->error().empty() ? std::string("re-asking a short reply failed") : client_->error());
        return rc;
      }
    }
  }
  return 0;
}

Relay::Status Relay::pump() {
  if (status_ != Status::kPulling) return status_;
  if (handshaking_) {
    const int rc = client_->tls_handshake();
    if (rc == -EAGAIN) return status_;
    if (rc < 0) return fail(client_->error());
    handshaking_ = false;
  }
  if (closing_) {
    int32_t answer = -1;
    const int rc = client_->poll_close(&answer);
    return rc == -EAGAIN ? status_ : closed(rc, answer);
  }
  std::vector<PageReply> replies;
  for (int round = 0; round < kRoundsPerWakeup; round++) {
    if (submit_demands() < 0 || submit_bulk() < 0) return fail(client_->error());
    replies.clear();
    if (client_->pump(&replies) < 0) return fail(client_->error());
    if (replies.empty()) break;
    if (take_replies(replies) < 0) return status_;
  }
  if (store_->pages_held() == store_->pages_total() && client_->in_flight() == 0) {
    if (options_.hold_close && !released_) {
      held_ = true;  // the dump keeps the tasks frozen: a reset (abort) still resumes them
      return status_;
    }
    return finish();
  }
  // Requests queued by this round (re-asks, more bulk) go out now.
  if (submit_demands() < 0 || submit_bulk() < 0) return fail(client_->error());
  return status_;
}

Relay::Status Relay::on_ready() { return pump(); }

Relay::Status Relay::demand(uint64_t pid, uint64_t vaddr, uint64_t nr_pages) {
  if (status_ != Status::kPulling) return status_;
  demands_.push_back(Demand{pid, vaddr, nr_pages});
  if (handshaking_) return status_;
  if (submit_demands() < 0) return fail(client_->error());
  return status_;
}

Relay::Status Relay::check_timeouts() {
  if (status_ != Status::kPulling) return status_;
  if (closing_) {
    if (client_->stalled_ms() > options_.stall_timeout_ms) {
      return fail("the dump did not answer CLOSE within " + std::to_string(options_.stall_timeout_ms) +
                      " ms (--relay-stall-timeout); every lazy page is held, and the dump may have counted the transfer as "
                      "done: its exit status says whether the original tasks are gone (0) or resumed",
                  false);
    }
    return status_;
  }
  if (handshaking_) {
    if (elapsed_ms() > static_cast<uint64_t>(options_.connect_timeout_ms)) {
      client_->tls_timed_out(options_.connect_timeout_ms);
      return fail(client_->error());
    }
    return status_;
  }
  const int64_t stalled = client_->stalled_ms();
  if (stalled > options_.stall_timeout_ms) {
    return fail("the dump's page server sent nothing for " + std::to_string(stalled) + " ms with " +
                std::to_string(client_->in_flight()) + " request(s) outstanding (--relay-stall-timeout)");
  }
  return status_;
}

// Every lazy page is held: check each task's count against its pagemap, then CLOSE. Only an answered CLOSE lets
// the connection end with a FIN, and only then does the dump count the transfer as done (docs/protocol.md §1.7).
Relay::Status Relay::finish() {
  for (size_t t = 0; t < task_pages_.size(); t++) {
    if (task_received_[t] != task_pages_[t]) {
      return fail("pid " + std::to_string(options_.tasks[t].pid) + ": received " + std::to_string(task_received_[t]) +
                  " pages, its pagemap has " + std::to_string(task_pages_[t]) + " lazy pages");
    }
  }
  int32_t answer = -1;
  if (!options_.tls) {
    // Plain TCP: CLOSE and our FIN go out now, the answer is read on the event loop (the thread never waits).
    const int rc = client_->begin_close();
    if (rc < 0) return closed(rc, answer);
    closing_ = true;
    return pump();
  }
  // TLS: the answer, its close_notify and its EOF are waited for here (PageClient::close_complete, at most the
  // stall timeout; the dump answers at once).
  return closed(client_->close_complete(options_.stall_timeout_ms, &answer), answer);
}

Relay::Status Relay::closed(int rc, int32_t answer) {
  if (rc < 0) {
    // The dump may have read our CLOSE (and our EOF): what it did with the tasks only its exit status says (0: it
    // killed them). Every page is held.
    return fail("CLOSE was not answered (" + client_->error() + "); every lazy page is held, and the dump may have " +
                    "counted the transfer as done: its exit status says whether the original tasks are gone (0) or resumed",
                false);
  }
  client_.reset();
  status_ = Status::kDone;
  ended_ns_.store(now_ns(), std::memory_order_relaxed);
  store_->finish(true, "");
  if (answer != 0) error_ = "the dump answered CLOSE with status " + std::to_string(answer);
  return status_;
}

}  // namespace lazyd
