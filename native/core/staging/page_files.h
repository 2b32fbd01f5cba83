// The page files of staged images: the pages-N.img of one pagemap of a sealed store (its eager pages, and with
// --persist its lazy ones too), written atomically so that a reader never sees a partial image: <path>.tmp,
// fsync, rename. Blocking file I/O: the binding runs it on a worker thread, never on the JavaScript thread or the
// page server's.
#pragma once

#include <cstdint>
#include <string>

#include "staging/page_store.h"

namespace lazyd {

struct PageFileResult {
  int64_t bytes = 0;  // written, when err == 0
  int err = 0;        // 0 or -errno
  std::string what;   // on error: "cannot create <path>.tmp" / "cannot write <path>"
};

// Writes the bytes of every PE_PRESENT entry of `key` (without include_lazy: leaving out PE_LAZY ones) to path.
// On failure nothing is left at path or at its temp name.
PageFileResult write_page_file(const PageStore& store, PageKey key, const std::string& path, bool include_lazy);

}  // namespace lazyd
