#include "lazy/engine/core.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cerrno>

#include "util/clock.h"

namespace lazyd::engine {

EngineCore::EngineCore(FaultEngineConfig config, EngineEventSink event_sink)
    : cfg(std::move(config)), sink(std::move(event_sink)) {}

EngineCore::~EngineCore() {
  if (epoll_fd >= 0) close(epoll_fd);
}

int EngineCore::epoll_add(int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

void EngineCore::epoll_mod(int fd, uint32_t events, uint64_t tag) {
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  epoll_ctl(epoll_fd, EPOLL_CTL_MOD, fd, &ev);
}

void EngineCore::epoll_del(int fd) { epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr); }

void EngineCore::emit(EngineEvent event) {
  if (!sink) return;
  try {
    sink(event);
  } catch (...) {
    // An event sink must not throw; never let it take the engine down.
  }
}

void EngineCore::warn(std::string message) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::kWarning;
  e.message = std::move(message);
  emit(std::move(e));
}

void EngineCore::fail(std::string message) {
  if (finished) return;
  {
    std::lock_guard<std::mutex> lock(error_mu);
    error = message;
  }
  finished = true;
  counters.end_ns.set(now_ns());
  state.store(EngineState::kFailed);
  EngineEvent e;
  e.kind = EngineEvent::Kind::kFailed;
  e.message = std::move(message);
  e.summary = counters.summary();
  emit(std::move(e));
}

int EngineCore::start_error(int rc, std::string message) {
  std::lock_guard<std::mutex> lock(error_mu);
  error = std::move(message);
  state.store(EngineState::kFailed);
  return rc;
}

}  // namespace lazyd::engine
