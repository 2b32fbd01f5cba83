#include "staging/page_files.h"

#include <cerrno>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace lazyd {

PageFileResult write_page_file(const PageStore& store, PageKey key, const std::string& path, bool include_lazy) {
  PageFileResult result;
  const std::string temp = path + ".tmp";
  // 0600 whatever the umask or a leftover temp file's mode: the file holds process memory. No symlink followed.
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd >= 0 && fchmod(fd, 0600) < 0) {
    result.err = -errno;
    close(fd);
    result.what = "cannot set mode 0600 on " + temp;
    return result;
  }
  if (fd < 0) {
    result.err = -errno;
    result.what = "cannot create " + temp;
    return result;
  }
  const int64_t written = store.write_pages(key, fd, include_lazy);
  int err = written < 0 ? static_cast<int>(written) : 0;
  if (!err && fsync(fd) < 0) err = -errno;
  if (close(fd) < 0 && !err) err = -errno;
  if (!err && rename(temp.c_str(), path.c_str()) < 0) err = -errno;
  if (err) {
    unlink(temp.c_str());
    result.err = err;
    result.what = "cannot write " + path;
    return result;
  }
  result.bytes = written;
  return result;
}

}  // namespace lazyd
