#include "kernel/host_probe.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "kernel/uffd.h"

namespace lazyd {

namespace {

int open_by_syscall() {
#ifdef SYS_userfaultfd
  long fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  return fd < 0 ? -errno : static_cast<int>(fd);
#else
  return -ENOSYS;
#endif
}

int open_by_device() {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -errno;
  int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  int err = errno;
  close(dev);
  return fd < 0 ? -err : fd;
}

}  // namespace

UffdProbe probe_userfaultfd() {
  UffdProbe probe;
  probe.noncoop_features = uffd::kNonCoopFeatures;
  int by_syscall = open_by_syscall();
  probe.syscall_errno = by_syscall < 0 ? -by_syscall : 0;
  int by_device = open_by_device();
  probe.device_errno = by_device < 0 ? -by_device : 0;
  // UFFDIO_API may be called once per fd: one fd asks what is offered, a second one asks for what lazyd needs.
  auto fresh = [&]() { int fd = open_by_syscall(); return fd >= 0 ? fd : open_by_device(); };
  int fd = by_syscall >= 0 ? by_syscall : by_device;
  if (by_syscall >= 0 && by_device >= 0) close(by_device);
  if (fd < 0) {
    probe.api_errno = probe.noncoop_errno = -fd;
    return probe;
  }
  int rc = uffd::api(fd, 0, &probe.features, nullptr);
  probe.api_errno = rc < 0 ? -rc : 0;
  close(fd);
  fd = fresh();
  if (fd < 0) {
    probe.noncoop_errno = -fd;
    return probe;
  }
  rc = uffd::api(fd, uffd::kNonCoopFeatures, nullptr, nullptr);
  probe.noncoop_errno = rc < 0 ? -rc : 0;
  close(fd);
  return probe;
}

int probe_sealed_memfd() {
  int fd = memfd_create("lazyd-check", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -errno;
  int rc = 0;
  if (ftruncate(fd, 4096) < 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) {
    rc = -errno;
  }
  close(fd);
  return rc;
}

}  // namespace lazyd
