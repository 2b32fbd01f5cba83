#include "lazy/engine/requests.h"

#include <algorithm>

#include "util/clock.h"

namespace lazyd::engine {

bool RequestTable::urgent_covers(uint64_t task, uint64_t img) const {
  for (const auto& [cookie, r] : requests_) {
    if (r.kind != ReqKind::kBackground && r.task == task && img >= r.img_start && img < r.img_start + r.len) return true;
  }
  return false;
}

bool RequestTable::submit(Task& t, const LazyRequest& req, ReqKind kind) {
  const FaultEngineConfig& cfg = core_.cfg;
  uint8_t* buf = pool_.get(req.len, std::max<uint64_t>(cfg.fault_around_bytes, core_.ps), cfg.bg_max_bytes);
  if (!buf) {
    t.ranges.release(req.img_start, req.len);
    core_.fail("out of memory for a reply buffer");
    return false;
  }
  const uint64_t cookie = next_cookie_++;
  requests_[cookie] = Request{t.id, req.img_start, req.len, kind, buf, estimator_.on_send(now_ns())};
  t.requests++;
  if (kind == ReqKind::kBackground) {
    bg_bytes_ += req.len;
    core_.counters.bytes_background.add(req.len);
  }
  core_.counters.requests.add();
  PageRequest pr;
  pr.cookie = cookie;
  pr.pid = static_cast<uint64_t>(t.pid);
  pr.img_vaddr = req.img_start;
  pr.nr_pages = req.len / core_.ps;
  pr.buf = buf;
  if (link_.submit(pr, kind != ReqKind::kBackground) < 0) {
    core_.fail("page request failed: " + link_.error());
    return false;
  }
  return true;
}

bool RequestTable::take(uint64_t cookie, Request* request) {
  auto it = requests_.find(cookie);
  if (it == requests_.end()) return false;
  *request = it->second;
  requests_.erase(it);
  if (!link_.synchronous()) estimator_.on_reply(request->sent, request->len, now_ns());
  if (request->kind == ReqKind::kBackground) bg_bytes_ -= request->len;
  if (Task* t = tasks_.by_id(request->task)) t->requests--;
  return true;
}

}  // namespace lazyd::engine
