// What `lazyd check` asks the kernel directly (no Node-API): can this process create a userfaultfd (by the
// syscall, or through /dev/userfaultfd), with the non-cooperative features of a lazy restore (docs/protocol.md §4.1), and
// can it create a sealed memfd (staging). Each probe creates and closes its own fds.
#pragma once

#include <cstdint>

namespace lazyd {

struct UffdProbe {
  int syscall_errno = 0;   // userfaultfd(O_CLOEXEC|O_NONBLOCK): 0 when it worked
  int device_errno = 0;    // /dev/userfaultfd + USERFAULTFD_IOC_NEW: 0 when it worked
  int api_errno = 0;       // UFFDIO_API with features 0 on whichever fd worked
  uint64_t features = 0;   // what the kernel offers (from that UFFDIO_API)
  int noncoop_errno = 0;   // UFFDIO_API asking for EVENT_FORK|REMAP|REMOVE|UNMAP (EPERM without CAP_SYS_PTRACE)
  uint64_t noncoop_features = 0;  // the non-cooperative features lazyd needs
};

UffdProbe probe_userfaultfd();

// memfd_create(MFD_ALLOW_SEALING) + F_ADD_SEALS (what staging's store does). 0 or -errno.
int probe_sealed_memfd();

}  // namespace lazyd
