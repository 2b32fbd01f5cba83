// The fault engine's side of the restore's hand-over (docs/protocol.md §3, lazy/restore_handshake.h): the lazy ranges of each
// dumped task (from the configuration), lazy-pages.socket, the one connection `criu restore` makes, a task per
// uffd handed over (zombies are only reported), the page source connected once all are in, and RSTF.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "lazy/engine/core.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"
#include "lazy/lazy_ranges.h"
#include "lazy/restore_handshake.h"

namespace lazyd::engine {

class RestoreIntake {
 public:
  RestoreIntake(EngineCore& core, TaskTable& tasks, SourceLink& link) : core_(core), tasks_(tasks), link_(link) {}
  ~RestoreIntake();
  RestoreIntake(const RestoreIntake&) = delete;
  RestoreIntake& operator=(const RestoreIntake&) = delete;

  // start(): each configured task's lazy ranges (checked), and its runs for a local source. 0 or -errno.
  int load_tasks(LocalPageSource* local);
  // start(): creates <work_dir>/lazy-pages.socket, watched by epoll. 0 or -errno.
  int listen();
  const std::string& socket_path() const { return socket_path_; }
  // The thread runs: the accept timeout starts.
  void started(uint64_t now) { listen_since_ = now; }

  // start() with defer_tasks: nothing to load until set_tasks().
  void defer() { tasks_known_ = false; }
  // defer_tasks: the tasks are in cfg now (engine thread): load them and read the waiting hand-overs.
  void tasks_set(LocalPageSource* local);

  void on_listen();   // the restore connects
  void on_restore();  // hand-overs, RSTF

  // For the timers.
  bool listening() const { return listen_fd_ >= 0; }
  bool awaiting_handovers() const { return restore_ && !restore_->all_handed_over(); }
  size_t handovers() const { return restore_ ? restore_->handovers() : 0; }
  uint64_t listen_since() const { return listen_since_; }
  uint64_t connected_since() const { return connected_since_; }
  uint64_t handed_over_since() const { return handed_over_since_; }

 private:
  void add_task(int pid, int uffd, int host_pid);
  void read_handovers(int fd);
  void handed_over();

  EngineCore& core_;
  TaskTable& tasks_;
  SourceLink& link_;
  std::unordered_map<int, std::vector<LazyRange>> images_;  // pid -> its lazy ranges at dump time
  int listen_fd_ = -1;
  std::string socket_path_;
  std::unique_ptr<handshake::HandshakeReader> restore_;
  bool tasks_known_ = true;  // false while defer_tasks waits for set_tasks()
  int waiting_fd_ = -1;      // defer_tasks: the accepted restore connection, not read until the tasks are known
  uint64_t listen_since_ = 0, connected_since_ = 0, handed_over_since_ = 0;
};

}  // namespace lazyd::engine
