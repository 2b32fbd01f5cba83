// The fault engine's requests in flight: one per range asked of the page source, each with its reply buffer
// (buffer_pool.h), tagged by a cookie the reply hands back; their send and reply times feed the link estimate.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "lazy/engine/buffer_pool.h"
#include "lazy/engine/core.h"
#include "lazy/engine/link_estimator.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"

namespace lazyd::engine {

struct Request {
  uint64_t task = 0;
  uint64_t img_start = 0;
  uint64_t len = 0;
  ReqKind kind = ReqKind::kFault;
  uint8_t* buf = nullptr;
  LinkEstimator::Sent sent;  // when it was asked (the link estimate)
};

class RequestTable {
 public:
  RequestTable(EngineCore& core, TaskTable& tasks, SourceLink& link) : core_(core), tasks_(tasks), link_(link) {}
  RequestTable(const RequestTable&) = delete;
  RequestTable& operator=(const RequestTable&) = delete;

  // Asks the source for req (already taken out of t's remaining ranges). False when the engine failed (no
  // buffer, or the source refused it).
  bool submit(Task& t, const LazyRequest& req, ReqKind kind);
  // The request a reply answers, out of the table (false: no such cookie). Its task owes one reply less.
  bool take(uint64_t cookie, Request* request);
  // A fault or fault-around request of task holds the image page at img (a scan: they are few).
  bool urgent_covers(uint64_t task, uint64_t img) const;
  // A reply buffer the installer is done with.
  void recycle(uint8_t* buf) { pool_.put(buf); }

  size_t size() const { return requests_.size(); }
  uint64_t bg_bytes() const { return bg_bytes_; }  // bytes of background requests in flight
  const LinkEstimator& link_estimate() const { return estimator_; }

 private:
  EngineCore& core_;
  TaskTable& tasks_;
  SourceLink& link_;
  std::unordered_map<uint64_t, Request> requests_;
  uint64_t next_cookie_ = 1;
  uint64_t bg_bytes_ = 0;
  BufferPool pool_;
  LinkEstimator estimator_;
};

}  // namespace lazyd::engine
