#include "kernel/uffd.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

namespace lazyd::uffd {
namespace {

int ioctl_retry(int fd, unsigned long request, void* arg) {
  int rc;
  do {
    rc = ioctl(fd, request, arg);
  } while (rc < 0 && errno == EINTR);
  return rc < 0 ? -errno : 0;
}

}  // namespace

int open_fd(int flags) {
#ifdef SYS_userfaultfd
  long fd = syscall(SYS_userfaultfd, flags);
  if (fd >= 0) return static_cast<int>(fd);
  int err = errno;
  if (err != EPERM && err != ENOSYS) return -err;
#endif
  // vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE: the device node grants the same thing by file mode.
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -errno;
  int fd2 = ioctl(dev, USERFAULTFD_IOC_NEW, flags & (O_CLOEXEC | O_NONBLOCK));
  int err2 = errno;
  close(dev);
  return fd2 < 0 ? -err2 : fd2;
}

int api(int fd, uint64_t features, uint64_t* features_out, uint64_t* ioctls_out) {
  uffdio_api a{};
  a.api = UFFD_API;
  a.features = features;
  int rc = ioctl_retry(fd, UFFDIO_API, &a);
  if (rc < 0) return rc;
  if (features_out) *features_out = a.features;
  if (ioctls_out) *ioctls_out = a.ioctls;
  return 0;
}

int register_range(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* ioctls_out) {
  uffdio_register r{};
  r.range.start = start;
  r.range.len = len;
  r.mode = mode;
  int rc = ioctl_retry(fd, UFFDIO_REGISTER, &r);
  if (rc == 0 && ioctls_out) *ioctls_out = r.ioctls;
  return rc;
}

int unregister_range(int fd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  return ioctl_retry(fd, UFFDIO_UNREGISTER, &r);
}

CopyResult copy(int fd, uint64_t dst, const void* src, uint64_t len, bool dontwake) {
  CopyResult result;
  const uint8_t* from = static_cast<const uint8_t*>(src);
  while (result.copied < len) {
    uffdio_copy c{};
    c.dst = dst + result.copied;
    c.src = reinterpret_cast<uint64_t>(from + result.copied);
    c.len = len - result.copied;
    c.mode = dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0;
    int rc = ioctl(fd, UFFDIO_COPY, &c);
    if (rc == 0) {
      result.copied = len;
      break;
    }
    int err = errno;
    if (err == EINTR) continue;
    // The kernel stores the bytes copied (or -errno) in c.copy and reports a partial copy as EAGAIN: carry on
    // with the rest to learn the real reason it stopped.
    if (c.copy > 0) {
      result.copied += static_cast<uint64_t>(c.copy);
      continue;
    }
    result.err = -err;
    break;
  }
  return result;
}

CopyResult zeropage(int fd, uint64_t dst, uint64_t len, bool dontwake) {
  CopyResult result;
  while (result.copied < len) {
    uffdio_zeropage z{};
    z.range.start = dst + result.copied;
    z.range.len = len - result.copied;
    z.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;
    int rc = ioctl(fd, UFFDIO_ZEROPAGE, &z);
    if (rc == 0) {
      result.copied = len;
      break;
    }
    int err = errno;
    if (err == EINTR) continue;
    if (z.zeropage > 0) {
      result.copied += static_cast<uint64_t>(z.zeropage);
      continue;
    }
    result.err = -err;
    break;
  }
  return result;
}

int wake(int fd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  return ioctl_retry(fd, UFFDIO_WAKE, &r);
}

int read_events(int fd, uffd_msg* msgs, size_t max) {
  for (;;) {
    ssize_t n = read(fd, msgs, max * sizeof(uffd_msg));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -errno;
    }
    if (n % sizeof(uffd_msg) != 0) return -EIO;
    return static_cast<int>(n / sizeof(uffd_msg));
  }
}

ErrorClass classify(int neg_errno, bool from_unregister) {
  switch (-neg_errno) {
    case 0: return ErrorClass::kOk;
    case EEXIST: return ErrorClass::kExists;
    case EAGAIN: return ErrorClass::kRetry;
    case ENOENT: return ErrorClass::kNoEnt;
    case ESRCH:
    case ENOSPC: return ErrorClass::kGone;
    // UFFDIO_UNREGISTER fails with ENOMEM once the mm is gone (mmget_not_zero fails), docs/protocol.md §4.4.
    case ENOMEM: return from_unregister ? ErrorClass::kGone : ErrorClass::kFatal;
    default: return ErrorClass::kFatal;
  }
}

const char* error_class_name(ErrorClass c) {
  switch (c) {
    case ErrorClass::kOk: return "ok";
    case ErrorClass::kExists: return "exists";
    case ErrorClass::kRetry: return "retry";
    case ErrorClass::kNoEnt: return "noent";
    case ErrorClass::kGone: return "gone";
    case ErrorClass::kFatal: return "fatal";
  }
  return "?";
}

const char* event_name(uint8_t event) {
  switch (event) {
    case UFFD_EVENT_PAGEFAULT: return "PAGEFAULT";
    case UFFD_EVENT_FORK: return "FORK";
    case UFFD_EVENT_REMAP: return "REMAP";
    case UFFD_EVENT_REMOVE: return "REMOVE";
    case UFFD_EVENT_UNMAP: return "UNMAP";
    default: return "unknown";
  }
}

}  // namespace lazyd::uffd
