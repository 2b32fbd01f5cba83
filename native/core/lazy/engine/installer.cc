#include "lazy/engine/installer.h"

#include <sys/epoll.h>

#include <algorithm>
#include <cstring>

#include "kernel/uffd.h"
#include "util/clock.h"
#include "util/text.h"

namespace lazyd::engine {

void Installer::on_source(uint32_t epoll_events) {
  if (!link_.ready()) return;
  collect_replies();
  if (!core_.finished && (epoll_events & (EPOLLERR | EPOLLHUP)) && link_.in_flight() == 0) {
    // Nothing outstanding and the peer is gone: only fatal if we still need it.
    std::vector<PageReply> none;
    int rc = link_.pump(&none);
    if (rc < 0) core_.fail("page server: " + link_.error());
  }
}

void Installer::collect_replies() {
  // The priority connection's replies (demand faults) are installed before the main one's are read: reading and
  // checking a slice of the drain first cost a fault's reply 20-90 us more.
  std::vector<PageReply> done;
  int rc = link_.pump_priority(&done);
  install_replies(done, rc);
  if (rc < 0 || core_.finished) return;
  done.clear();
  rc = link_.pump_main(&done);
  install_replies(done, rc);
}

void Installer::install_replies(const std::vector<PageReply>& done, int rc) {
  const uint64_t mismatches = link_.checksum_mismatches();
  if (mismatches != core_.counters.checksum_mismatches.get()) {
    core_.counters.checksum_mismatches.set(mismatches);
    if (rc == 0) core_.warn("page server: " + link_.last_checksum_mismatch());
  }
  for (const PageReply& reply : done) {
    if (core_.finished) break;
    on_reply(reply);
  }
  if (rc < 0 && !core_.finished) core_.fail("page server: " + link_.error());
  link_.update_interest();
}

void Installer::on_reply(const PageReply& reply) {
  Request req;
  if (!requests_.take(reply.cookie, &req)) return;
  Task* t = tasks_.by_id(req.task);
  if (!t || t->gone) {
    core_.counters.pages_discarded.add(reply.nr_pages);
    requests_.recycle(req.buf);
    return;
  }
  const uint64_t got = reply.nr_pages * core_.ps;
  t->summary.bytes_received += got;
  // A short reply (the server clamps at its iovec end): the rest goes back to remaining.
  if (got < req.len) t->ranges.release(req.img_start + got, req.len - got);
  place(*t, Install{t->id, req.img_start, got, req.kind, req.buf, 0, req.buf});
}

void Installer::place(Task& t, Install p) {
  // A local source answers one drain request per pass already (Scheduler::schedule()): not sliced again.
  const bool drain = p.kind == ReqKind::kBackground && !link_.synchronous();
  Install rest;
  bool sliced = false;
  if (drain && p.len > slice_left_) {
    const uint64_t now = slice_left_ & ~(core_.ps - 1);
    if (now == 0) {
      core_.counters.install_slices.add();
      rest_.push_back(p);
      return;
    }
    rest = p;
    rest.img_start += now;
    rest.len -= now;
    rest.buf += now;
    p.len = now;
    sliced = true;
    core_.counters.install_slices.add();
  }
  if (drain) slice_left_ -= p.len;
  if (install(t, p)) {
    if (sliced) {
      rest_.push_back(rest);
    } else {
      requests_.recycle(p.base);
    }
  } else if (!core_.finished && !t.gone) {
    if (sliced) p.len += rest.len;  // retried whole: install() gave back what it had claimed
    pending_.push_back(p);
  } else {
    requests_.recycle(p.base);
  }
}

void Installer::resume() {
  while (!rest_.empty() && slice_left_ >= core_.ps && !core_.finished) {
    Install p = rest_.front();
    rest_.pop_front();
    Task* t = tasks_.by_id(p.task);
    if (!t || t->gone) {
      requests_.recycle(p.base);
      continue;
    }
    place(*t, p);
  }
}

// Installs what is still wanted of a reply. Returns true when done with the buffer, false when a COPY hit
// EAGAIN (a non-cooperative event is pending: read it first, then retry; the unfinished parts were put back
// in flight so the event's remap/drop applies to them).
bool Installer::install(Task& t, const Install& p) {
  EngineCounters& counters = core_.counters;
  const uint64_t ps = core_.ps;
  std::vector<LazyRange> pieces = t.ranges.claim(p.img_start, p.len);
  uint64_t claimed = 0;
  for (const LazyRange& piece : pieces) claimed += piece.len();
  counters.pages_discarded.add((p.len - claimed) / ps);
  if (pieces.empty()) return true;
  const bool dontwake = pieces.size() > 1;
  bool need_wake = dontwake;
  uint64_t lo = UINT64_MAX, hi = 0;
  bool retry = false;
  for (size_t i = 0; i < pieces.size(); i++) {
    const LazyRange& piece = pieces[i];
    if (retry || core_.finished || t.gone) {
      if (retry) t.ranges.unclaim(piece);
      continue;
    }
    const uint8_t* src = p.buf + (piece.img_start - p.img_start);
    uint64_t off = 0;
    while (off < piece.len()) {
      const uint64_t t0 = now_ns();
      uffd::CopyResult r = uffd::copy(t.uffd, piece.start + off, src + off, piece.len() - off, dontwake);
      const uint64_t spent = now_ns() - t0;
      counters.copy_ns.add(spent);
      t.summary.copy_ns += spent;
      if (r.copied) {
        counters.copy_bytes.add(r.copied);
        t.summary.copy_bytes += r.copied;
        count_installed(t, p.kind, r.copied / ps);
        tasks_.settle_waiting(t, piece.start + off, piece.start + off + r.copied, FaultResult::kCopied);
        lo = std::min(lo, piece.start + off);
        hi = std::max(hi, piece.start + off + r.copied);
        off += r.copied;
      }
      if (r.err == 0) break;
      const uffd::ErrorClass cls = uffd::classify(r.err);
      if (cls == uffd::ErrorClass::kExists) {
        // Already there: done, page by page (docs/protocol.md §4.5); its waiters need a wake of their own.
        counters.pages_exist.add();
        t.summary.pages_exist++;
        tasks_.settle_waiting(t, piece.start + off, piece.start + off + ps, FaultResult::kExists);
        lo = std::min(lo, piece.start + off);
        hi = std::max(hi, piece.start + off + ps);
        need_wake = true;
        off += ps;
        continue;
      }
      if (cls == uffd::ErrorClass::kRetry) {
        LazyRange rest = piece;
        rest.start += off;
        rest.img_start += off;
        t.ranges.unclaim(rest);
        retry = true;
        break;
      }
      if (cls == uffd::ErrorClass::kNoEnt) {
        // Not registered any more (an UNMAP/REMOVE we have not read yet, or a VMA change): nothing to fill.
        if (!warned_noent_) {
          warned_noent_ = true;
          core_.warn("UFFDIO_COPY at " + hex(piece.start + off) + " of pid " + std::to_string(t.pid) +
                     ": range no longer registered, dropping it");
        }
        const uint64_t pages = (piece.len() - off) / ps;
        t.summary.pages_dropped += pages;
        counters.pages_dropped.add(pages);
        tasks_.settle_waiting(t, piece.start + off, piece.end, FaultResult::kDropped);
        break;
      }
      if (cls == uffd::ErrorClass::kGone) {
        // The claimed parts are in neither set any more: count what was not installed as dropped here.
        uint64_t lost = piece.len() - off;
        for (size_t k = i + 1; k < pieces.size(); k++) lost += pieces[k].len();
        t.summary.pages_dropped += lost / ps;
        counters.pages_dropped.add(lost / ps);
        tasks_.gone(t);
        break;
      }
      core_.fail("UFFDIO_COPY at " + hex(piece.start + off) + " of pid " + std::to_string(t.pid) + " failed: " +
                 strerror(-r.err));
      break;
    }
  }
  if (need_wake && hi > lo && !t.gone && t.uffd >= 0) uffd::wake(t.uffd, lo, hi - lo);
  return !retry;
}

void Installer::count_installed(Task& t, ReqKind kind, uint64_t pages) {
  EngineCounters& counters = core_.counters;
  switch (kind) {
    case ReqKind::kFault: counters.pages_fault.add(pages); t.summary.pages_fault += pages; break;
    case ReqKind::kAround: counters.pages_around.add(pages); t.summary.pages_around += pages; break;
    case ReqKind::kBackground: counters.pages_background.add(pages); t.summary.pages_background += pages; break;
  }
}

void Installer::retry() {
  if (pending_.empty()) return;
  auto list = std::move(pending_);
  pending_.clear();
  for (Install& p : list) {
    Task* t = tasks_.by_id(p.task);
    if (!t || t->gone || core_.finished) {
      requests_.recycle(p.base);
      continue;
    }
    events_.read(*t);
    if (t->gone || core_.finished) {
      requests_.recycle(p.base);
      continue;
    }
    p.attempts++;
    if (install(*t, p)) {
      requests_.recycle(p.base);
    } else if (p.attempts > 100000) {
      core_.fail("UFFDIO_COPY for pid " + std::to_string(t->pid) + " keeps failing with EAGAIN");
      requests_.recycle(p.base);
    } else {
      pending_.push_back(p);
    }
  }
}

bool Installer::pending_for(uint64_t task) const {
  bool has_pending = false;
  for (const auto& p : pending_) has_pending |= p.task == task;
  for (const auto& p : rest_) has_pending |= p.task == task;
  return has_pending;
}

}  // namespace lazyd::engine
