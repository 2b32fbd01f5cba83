// Thin wrappers over the userfaultfd ioctls the lazy-pages daemon uses (docs/protocol.md §4.1, §4.4, §4.5).
// Every function returns 0 / a count, or -errno; nothing throws and nothing logs.
#pragma once

#include <linux/userfaultfd.h>

#include <cstddef>
#include <cstdint>

namespace lazyd::uffd {

// The non-cooperative event features criu restore asks for (§4.1).
constexpr uint64_t kNonCoopFeatures =
    UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP;

// Opens a userfaultfd for this process: the userfaultfd syscall, falling back to /dev/userfaultfd
// (USERFAULTFD_IOC_NEW). flags: O_CLOEXEC | O_NONBLOCK (| UFFD_USER_MODE_ONLY for the syscall). Returns fd or -errno.
// The daemon never opens one itself (restore hands them over); this is for tests and tools.
int open_fd(int flags);

// UFFDIO_API handshake. Returns 0 or -errno; *features_out / *ioctls_out receive what the kernel reports.
int api(int fd, uint64_t features, uint64_t* features_out, uint64_t* ioctls_out);

// UFFDIO_REGISTER with the given mode (UFFDIO_REGISTER_MODE_MISSING). Returns 0 or -errno.
int register_range(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t* ioctls_out);
// UFFDIO_UNREGISTER. -ENOMEM means the process is gone (§4.4). Wakes threads blocked in the range.
int unregister_range(int fd, uint64_t start, uint64_t len);

struct CopyResult {
  int err = 0;          // 0, or -errno of the first page not installed
  uint64_t copied = 0;  // bytes installed from dst onwards before err
};

// UFFDIO_COPY of [src, src+len) to dst. The kernel may install a prefix and then fail: `copied` says how much
// went in. A partial copy is reported by the kernel as EAGAIN with a positive count; this wrapper then
// continues with the rest, so err is the real reason the remainder failed (EEXIST, ENOENT, ...), or EAGAIN
// only when nothing more could be copied because of a pending non-cooperative event (mmap_changing).
// dontwake: UFFDIO_COPY_MODE_DONTWAKE (wake later with wake()).
CopyResult copy(int fd, uint64_t dst, const void* src, uint64_t len, bool dontwake);
// UFFDIO_ZEROPAGE, same conventions.
CopyResult zeropage(int fd, uint64_t dst, uint64_t len, bool dontwake);
// UFFDIO_WAKE.
int wake(int fd, uint64_t start, uint64_t len);

// Reads up to max 32-byte messages from the (non-blocking) uffd. Returns the count (0 when nothing is pending)
// or -errno. A short read is -EIO.
int read_events(int fd, uffd_msg* msgs, size_t max);

// What to do about an errno from COPY / ZEROPAGE / UNREGISTER (§4.5, §6.4).
enum class ErrorClass {
  kOk,
  kExists,  // EEXIST: the page is there already: count it as installed, go on with the next page
  kRetry,   // EAGAIN: a non-cooperative event is pending: read events first, then retry
  kNoEnt,   // ENOENT: the range is not (or no longer) registered in a VMA of this mm
  kGone,    // ESRCH / ENOSPC (and ENOMEM from unregister): the process exited
  kFatal,   // anything else
};
ErrorClass classify(int neg_errno, bool from_unregister = false);
const char* error_class_name(ErrorClass c);

const char* event_name(uint8_t event);

}  // namespace lazyd::uffd
