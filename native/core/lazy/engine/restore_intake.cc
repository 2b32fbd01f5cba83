#include "lazy/engine/restore_intake.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <cstring>

#include "util/clock.h"
#include "util/text.h"

namespace lazyd::engine {

RestoreIntake::~RestoreIntake() {
  restore_.reset();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (waiting_fd_ >= 0) close(waiting_fd_);
}

int RestoreIntake::load_tasks(LocalPageSource* local) {
  const uint64_t ps = core_.ps;
  for (const auto& task : core_.cfg.tasks) {
    if (images_.count(task.pid)) return core_.start_error(-EINVAL, "pid " + std::to_string(task.pid) + " given twice");
    std::vector<LazyRange> ranges;
    for (const auto& run : task.runs) {
      if (run.nr_pages == 0) continue;
      ranges.push_back(LazyRange{run.img_start, run.img_start + run.nr_pages * ps, run.img_start, 0});
      if (local) {
        int rc = local->add_run(static_cast<uint64_t>(task.pid), run.img_start, run.nr_pages, run.fd, run.file_offset);
        if (rc < 0) {
          return core_.start_error(rc, "invalid local run for pid " + std::to_string(task.pid) + " at " +
                                           hex(run.img_start));
        }
      }
    }
    LazyRanges check(ps);
    if (check.build(ranges) < 0) {
      return core_.start_error(-EINVAL, "lazy ranges of pid " + std::to_string(task.pid) +
                                            " are unaligned or overlap");
    }
    images_[task.pid] = std::move(ranges);
  }
  return 0;
}

int RestoreIntake::listen() {
  listen_fd_ = handshake::listen_socket(core_.cfg.work_dir, &socket_path_);
  if (listen_fd_ < 0) {
    int rc = listen_fd_;
    listen_fd_ = -1;
    return core_.start_error(rc, "cannot listen on " + socket_path_ + ": " + strerror(-rc));
  }
  core_.epoll_add(listen_fd_, EPOLLIN, kTagListen);
  return 0;
}

void RestoreIntake::on_listen() {
  int fd = handshake::accept_now(listen_fd_);
  if (fd == -EAGAIN) return;
  if (fd < 0) {
    core_.fail(std::string("accepting the restore connection failed: ") + strerror(-fd));
    return;
  }
  // criu restore connects once; the listener is not needed any more (docs/protocol.md §3.1).
  core_.epoll_del(listen_fd_);
  close(listen_fd_);
  listen_fd_ = -1;
  EngineEvent e;
  e.kind = EngineEvent::Kind::kRestoreConnected;
  core_.emit(std::move(e));
  // defer_tasks: the hand-overs wait in the socket buffer (criu restore blocks on nothing until it has sent
  // them all, §3.2) until set_tasks() says how many to expect.
  if (!tasks_known_) {
    waiting_fd_ = fd;
    return;
  }
  read_handovers(fd);
}

void RestoreIntake::tasks_set(LocalPageSource* local) {
  if (tasks_known_) return;
  tasks_known_ = true;
  if (load_tasks(local) < 0) {
    std::string message;
    {
      std::lock_guard<std::mutex> lock(core_.error_mu);
      message = core_.error;
    }
    core_.fail(std::move(message));
    return;
  }
  if (waiting_fd_ >= 0) {
    const int fd = waiting_fd_;
    waiting_fd_ = -1;
    read_handovers(fd);
  }
}

void RestoreIntake::read_handovers(int fd) {
  restore_ = std::make_unique<handshake::HandshakeReader>(fd, core_.cfg.nr_tasks);
  connected_since_ = now_ns();
  core_.state.store(EngineState::kHandshake);
  core_.epoll_add(fd, EPOLLIN | EPOLLRDHUP, kTagRestore);
  if (core_.cfg.nr_tasks == 0) handed_over();
  on_restore();
}

void RestoreIntake::on_restore() {
  if (!restore_) return;
  std::vector<handshake::Handover> items;
  const bool all_before = restore_->all_handed_over();
  auto status = restore_->on_readable(&items);
  for (const auto& item : items) {
    if (item.kind == handshake::Handover::Kind::kZombie) {
      EngineEvent e;
      e.kind = EngineEvent::Kind::kZombie;
      e.pid = item.pid;
      core_.emit(std::move(e));
    } else {
      add_task(item.pid, item.fd, item.host_pid);
    }
  }
  if (core_.finished) return;
  if (!all_before && restore_->all_handed_over()) handed_over();
  if (core_.finished) return;
  if (status == handshake::HandshakeReader::Status::kError) {
    core_.fail(restore_->error());
    return;
  }
  if (status == handshake::HandshakeReader::Status::kFinished) {
    core_.rstf = true;
    core_.rstf_ns = now_ns();
    core_.epoll_del(restore_->fd());
    restore_.reset();  // restore closes its end after RSTF (§3.2)
    EngineEvent e;
    e.kind = EngineEvent::Kind::kRestoreFinished;
    core_.emit(std::move(e));
  }
}

void RestoreIntake::add_task(int pid, int uffd, int host_pid) {
  std::unique_ptr<Task> task = tasks_.make();
  task->pid = pid;
  task->host_pid = host_pid;
  task->uffd = uffd;
  auto it = images_.find(pid);
  if (it != images_.end()) task->ranges.build(it->second);
  int err = 0;
  Task* added = tasks_.add(std::move(task), &err);
  if (!added) {
    core_.fail("cannot watch the uffd of pid " + std::to_string(pid) + ": " + strerror(-err));
    return;
  }
  EngineEvent e;
  e.kind = EngineEvent::Kind::kTask;
  e.pid = pid;
  e.host_pid = host_pid;
  if (host_pid > 0) e.message = "host pid " + std::to_string(host_pid);
  e.task = added->id;
  core_.emit(std::move(e));
}

// All hand-overs are in: now connect to the page server, as criu does (§4.2). Connecting only after a good
// handshake also matters for `criu dump --lazy-pages`: once a client came and went it kills the source tasks.
void RestoreIntake::handed_over() {
  handed_over_since_ = now_ns();
  core_.state.store(EngineState::kRunning);
  link_.connect();
}

}  // namespace lazyd::engine
