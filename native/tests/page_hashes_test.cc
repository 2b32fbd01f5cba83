// hash_file_pages() over crafted files: an empty file, one short page, a partial last page, and files read in
// several chunks (with a chunk size that is not a whole number of pages). Each page hash and the whole-file hash
// are checked against gnutls_hash_fast() over the same bytes, and against known SHA-256 vectors.
#include "util/page_hashes.h"

#include <fcntl.h>
#include <gnutls/crypto.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"

using lazyd::hash_file_pages;
using lazyd::hex_digest;
using lazyd::kSha256Bytes;
using lazyd::PageHashesResult;

static std::string dir;

static std::string write_file(const std::string& name, const std::vector<uint8_t>& bytes) {
  const std::string p = dir + "/" + name;
  int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(fd >= 0);
  CHECK(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  close(fd);
  return p;
}

static std::string sha(const uint8_t* data, size_t len) {
  uint8_t digest[kSha256Bytes];
  CHECK(gnutls_hash_fast(GNUTLS_DIG_SHA256, data, len, digest) == 0);
  return hex_digest(digest, kSha256Bytes);
}

// Every page hash and the whole hash of r equal the reference over `bytes`.
static void check_against(const PageHashesResult& r, const std::vector<uint8_t>& bytes, size_t page_size) {
  CHECK(r.err == 0);
  CHECK(r.size == bytes.size());
  CHECK(hex_digest(r.whole, kSha256Bytes) == sha(bytes.data(), bytes.size()));
  const size_t pages = (bytes.size() + page_size - 1) / page_size;
  CHECK(r.pages.size() == pages * kSha256Bytes);
  for (size_t i = 0; i < pages; i++) {
    const size_t len = bytes.size() - i * page_size < page_size ? bytes.size() - i * page_size : page_size;
    CHECK(hex_digest(r.pages.data() + i * kSha256Bytes, kSha256Bytes) == sha(bytes.data() + i * page_size, len));
  }
}

int main() {
  char tmpl[] = "/tmp/lazyd-page-hashes-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  dir = tmpl;
  const size_t ps = 4096;

  // Empty: no pages, the SHA-256 of nothing.
  {
    const std::string p = write_file("empty", {});
    PageHashesResult r = hash_file_pages(p, ps);
    CHECK(r.err == 0);
    CHECK(r.size == 0);
    CHECK(r.pages.empty());
    CHECK(hex_digest(r.whole, kSha256Bytes) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    unlink(p.c_str());
  }
  // Three bytes: one partial page, hashed as the bytes there are (SHA-256("abc")).
  {
    const std::string p = write_file("abc", {'a', 'b', 'c'});
    PageHashesResult r = hash_file_pages(p, ps);
    CHECK(r.err == 0);
    CHECK(r.size == 3);
    CHECK(r.pages.size() == kSha256Bytes);
    const std::string abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    CHECK(hex_digest(r.pages.data(), kSha256Bytes) == abc);
    CHECK(hex_digest(r.whole, kSha256Bytes) == abc);
    unlink(p.c_str());
  }
  // Two zero pages: each the known SHA-256 of 4096 zero bytes.
  {
    const std::string p = write_file("zeros", std::vector<uint8_t>(2 * ps, 0));
    PageHashesResult r = hash_file_pages(p, ps);
    CHECK(r.pages.size() == 2 * kSha256Bytes);
    for (int i = 0; i < 2; i++) {
      CHECK(hex_digest(r.pages.data() + i * kSha256Bytes, kSha256Bytes) == "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7");
    }
    unlink(p.c_str());
  }
  // Random data, 37 pages and a partial last one, read in chunks of 1 page, 3 pages, 10000 bytes (rounded down to
  // 2 pages), the whole file at once, and the default; equal pages hash equal, a changed byte changes one hash.
  {
    std::mt19937 rng(15);
    std::vector<uint8_t> bytes(37 * ps + 1234);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    std::memcpy(bytes.data() + 20 * ps, bytes.data() + 3 * ps, ps);  // page 20 == page 3
    const std::string p = write_file("random", bytes);
    for (size_t chunk : {ps, 3 * ps, size_t{10000}, bytes.size() + ps, size_t{0}}) check_against(hash_file_pages(p, ps, chunk), bytes, ps);
    PageHashesResult before = hash_file_pages(p, ps, 3 * ps);
    CHECK(std::memcmp(before.pages.data() + 3 * kSha256Bytes, before.pages.data() + 20 * kSha256Bytes, kSha256Bytes) == 0);
    bytes[7 * ps + 100] ^= 1;
    write_file("random", bytes);
    PageHashesResult after = hash_file_pages(p, ps, 3 * ps);
    check_against(after, bytes, ps);
    for (size_t i = 0; i < 38; i++) {
      const bool same = std::memcmp(before.pages.data() + i * kSha256Bytes, after.pages.data() + i * kSha256Bytes, kSha256Bytes) == 0;
      CHECK(same == (i != 7));
    }
    // The whole-file hash alone (page size 0): the same digest, no page hashes.
    PageHashesResult whole = hash_file_pages(p, 0, 5000);
    CHECK(whole.err == 0);
    CHECK(whole.pages.empty());
    CHECK(std::memcmp(whole.whole, after.whole, kSha256Bytes) == 0);
    // Another page size: 16 KiB pages over the same bytes.
    check_against(hash_file_pages(p, 4 * ps, 5 * ps), bytes, 4 * ps);
    unlink(p.c_str());
  }
  // A file that is not there: -ENOENT and the path in the message.
  {
    PageHashesResult r = hash_file_pages(dir + "/missing", ps);
    CHECK(r.err == -ENOENT);
    CHECK(r.what.find("missing") != std::string::npos);
  }
  // A directory opens but cannot be read: -EISDIR.
  CHECK(hash_file_pages(dir, ps).err == -EISDIR);
  rmdir(dir.c_str());
  return check_report();
}
