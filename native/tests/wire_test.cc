// The C++ wire codec (native/core/wire/wire.{h,cc}) against the real CRIU 4.1.1 and 4.2.1 sessions recorded in
// test/fixtures (relative to the working directory, the repo root under ctest; the counts to expect come from
// each session's session.json), and against crafted edge cases (the same table as test/unit/wire.test.ts).
// No framework: CHECK prints file:line and exits 1.
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "fixtures.h"
#include "wire/wire.h"

namespace {

using namespace lazyd::wire;
using Bytes = std::vector<uint8_t>;

int g_passed = 0;

#define CHECK(cond, ...)                                                            \
  do {                                                                              \
    if (cond) {                                                                     \
      ++g_passed;                                                                   \
    } else {                                                                        \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n%d passed, 1 failed\n", g_passed);                    \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

constexpr size_t kPage = 4096;

Bytes read_file(const char* version, const char* session, const char* file) {
  const std::string data = fixtures::read(version, session, file);
  return Bytes(data.begin(), data.end());
}

// The workload's data area in a session (session.json): its pages and the seed of their pattern.
struct DataArea {
  uint64_t start, end, pages, seed;
};

DataArea data_area(const char* version, const char* session) {
  const fixtures::Json& w = fixtures::session(version, session)["workload"];
  const fixtures::Json& d = w["data_area"];
  return DataArea{d["start"].hex(), d["end"].hex(), static_cast<uint64_t>(d["pages"].num()), static_cast<uint64_t>(w["seed"].num())};
}

void put_u32(Bytes& b, size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, 4); }
void put_u64(Bytes& b, size_t off, uint64_t v) { std::memcpy(b.data() + off, &v, 8); }
int32_t get_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

Bytes h24(uint32_t cmd, uint32_t nr, uint64_t vaddr, uint64_t dst) {
  Bytes b(24);
  put_u32(b, 0, cmd);
  put_u32(b, 4, nr);
  put_u64(b, 8, vaddr);
  put_u64(b, 16, dst);
  return b;
}
Bytes h32(uint32_t cmd, uint32_t pad, uint64_t nr, uint64_t vaddr, uint64_t dst) {
  Bytes b(32);
  put_u32(b, 0, cmd);
  put_u32(b, 4, pad);
  put_u64(b, 8, nr);
  put_u64(b, 16, vaddr);
  put_u64(b, 24, dst);
  return b;
}

uint32_t make_cmd(uint32_t command, uint32_t flags) { return (flags << PS_CMD_BITS) | command; }

// The workload's page pattern (test/workload/workload.c): word w of data page p is mix(seed, p, w).
uint64_t mix(uint64_t seed, uint64_t p, uint64_t w) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + p * 0xBF58476D1CE4E5B9ull + w * 0x94D049BB133111EBull + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

bool page_matches(const uint8_t* page, uint64_t p, uint64_t seed) {
  for (uint64_t w = 0; w < kPage / 8; ++w) {
    uint64_t v;
    std::memcpy(&v, page + 8 * w, 8);
    if (v != mix(seed, p, w)) return false;
  }
  return true;
}

// Counts data-area pages in [vaddr, vaddr + nr pages) whose bytes are at data; checks each against the pattern.
void check_data_pages(const DataArea& area, uint64_t vaddr, uint64_t nr, const uint8_t* data, std::vector<int>& seen) {
  for (uint64_t i = 0; i < nr; ++i) {
    const uint64_t va = vaddr + i * kPage;
    if (va < area.start || va >= area.end) continue;
    const uint64_t p = (va - area.start) / kPage;
    ++seen[p];
    CHECK(page_matches(data + i * kPage, p, area.seed), "data page %" PRIu64 " (vaddr 0x%" PRIx64 ") does not match the pattern", p, va);
  }
}

void check_all_data_pages_once(const std::vector<int>& seen, const char* what) {
  for (size_t p = 0; p < seen.size(); ++p) CHECK(seen[p] == 1, "%s: data page %zu seen %d times", what, p, seen[p]);
}

struct Message {
  size_t offset;
  Header header;
  size_t payload;
};

// Decodes one header at off, and checks that encode() gives back the same bytes.
Header decode_roundtrip(Format format, const Bytes& stream, size_t off, const char* what) {
  const size_t size = header_size(format);
  CHECK(off + size <= stream.size(), "%s: truncated header at %zu", what, off);
  const Header h = decode(format, stream.data() + off);
  uint8_t out[HEADER_SIZE_MAX];
  CHECK(encode(format, h, out), "%s: encode failed at %zu", what, off);
  CHECK(std::memcmp(out, stream.data() + off, size) == 0, "%s: header at %zu does not re-encode byte-exactly", what, off);
  return h;
}

size_t payload_of(const Header& h) {
  const bool data = h.command() == PS_IOV_ADD || (h.command() == PS_IOV_ADD_F && (h.flags() & PE_PRESENT) != 0);
  return data ? static_cast<size_t>(h.nr_pages) * kPage : 0;
}

std::vector<Message> parse_client(Format format, const Bytes& stream, const char* what) {
  std::vector<Message> out;
  size_t off = 0;
  while (off < stream.size()) {
    const Header h = decode_roundtrip(format, stream, off, what);
    const uint32_t c = h.command();
    const bool known = (c >= PS_IOV_ADD && c <= PS_IOV_GET) || c == PS_IOV_CLOSE || c == PS_IOV_FORCE_CLOSE;
    CHECK(known, "%s: unknown command 0x%08x at %zu", what, h.cmd, off);
    CHECK(std::strcmp(command_name(c), "unknown") != 0, "%s: command_name", what);
    const size_t payload = payload_of(h);
    CHECK(off + header_size(format) + payload <= stream.size(), "%s: truncated payload at %zu", what, off);
    out.push_back({off, h, payload});
    off += header_size(format) + payload;
  }
  CHECK(off == stream.size(), "%s: stream not consumed exactly", what);
  CHECK(!out.empty() && out.back().header.command() == PS_IOV_CLOSE, "%s: does not end with CLOSE", what);
  CHECK(out.back().header.nr_pages == 0 && out.back().header.vaddr == 0 && out.back().header.dst_id == 0,
        "%s: CLOSE carries nonzero fields", what);
  return out;
}

void test_remote_lazy(const char* version, Format format) {
  const Bytes c2s = read_file(version, "remote-lazy", "client-to-server.bin");
  const Bytes s2c = read_file(version, "remote-lazy", "server-to-client.bin");
  const std::string what = std::string(version) + " remote-lazy";
  const fixtures::Json& facts = fixtures::session(version, "remote-lazy");
  const size_t expected_gets = static_cast<size_t>(facts["stream"]["gets"].num());
  const uint64_t pid = static_cast<uint64_t>(facts["workload"]["ns_pid"].num());
  // 4.2.1 sends stack bytes as the padding of its GETs (the same in every GET of a recording); 4.1.1 has none.
  const uint32_t get_pad = format == Format::V32 ? static_cast<uint32_t>(facts["stream"]["get_pad"].hex()) : 0;
  const size_t lazy_pages = static_cast<size_t>(facts["pagemap"]["totals"]["lazy_pages"].num());
  const DataArea area = data_area(version, "remote-lazy");
  const std::vector<Message> gets = parse_client(format, c2s, (what + " c2s").c_str());
  CHECK(gets.size() == expected_gets + 1, "%s: %zu messages", what.c_str(), gets.size());
  CHECK(c2s.size() == (expected_gets + 1) * header_size(format), "%s: c2s size %zu", what.c_str(), c2s.size());

  CHECK(detect(c2s.data(), c2s.size(), kPage) == format, "%s: detect(first GET)", what.c_str());
  CHECK(detect(s2c.data(), s2c.size(), kPage) == format, "%s: detect(first reply)", what.c_str());

  std::vector<int> seen(area.pages, 0);
  size_t off = 0, pages = 0;
  for (size_t i = 0; i + 1 < gets.size(); ++i) {
    const Header& get = gets[i].header;
    CHECK(get.command() == PS_IOV_GET && get.flags() == 0, "%s: message %zu is not a GET", what.c_str(), i);
    CHECK(get.dst_id == pid, "%s: GET dst_id is the bare vpid %" PRIu64, what.c_str(), pid);
    CHECK(get.pad == get_pad, "%s: GET pad 0x%08x", what.c_str(), get.pad);
    CHECK(detect(c2s.data() + gets[i].offset, header_size(format), kPage) == format, "%s: detect(GET %zu)", what.c_str(), i);

    const Header reply = decode_roundtrip(format, s2c, off, (what + " s2c").c_str());
    CHECK(detect(s2c.data() + off, header_size(format), kPage) == format, "%s: detect(reply %zu)", what.c_str(), i);
    CHECK(reply.cmd == GET_REPLY_CMD, "%s: reply cmd 0x%08x", what.c_str(), reply.cmd);
    CHECK(reply.vaddr == get.vaddr && reply.dst_id == get.dst_id && reply.pad == get.pad && reply.nr_pages == get.nr_pages,
          "%s: reply %zu does not echo its GET", what.c_str(), i);
    off += header_size(format);
    const size_t bytes = static_cast<size_t>(reply.nr_pages) * kPage;
    CHECK(off + bytes <= s2c.size(), "%s: truncated reply payload", what.c_str());
    check_data_pages(area, reply.vaddr, reply.nr_pages, s2c.data() + off, seen);
    off += bytes;
    pages += reply.nr_pages;
  }
  const Message& close = gets.back();
  CHECK(detect(c2s.data() + close.offset, header_size(format), kPage) == Format::Unknown, "%s: detect(CLOSE)", what.c_str());
  CHECK(off + 4 == s2c.size(), "%s: %zu bytes left for the CLOSE status", what.c_str(), s2c.size() - off);
  CHECK(get_i32(s2c.data() + off) == 0, "%s: CLOSE status", what.c_str());
  CHECK(pages == lazy_pages, "%s: %zu pages served, the pagemap has %zu lazy ones", what.c_str(), pages, lazy_pages);
  check_all_data_pages_once(seen, what.c_str());
}

void test_upload(const char* version, Format format) {
  const Bytes c2s = read_file(version, "upload", "client-to-server.bin");
  const Bytes s2c = read_file(version, "upload", "server-to-client.bin");
  const std::string what = std::string(version) + " upload";
  const fixtures::Json& facts = fixtures::session(version, "upload");
  // OPEN2, one ADD_F per entry of the pagemap criu page-server wrote, CLOSE; every page of it with data.
  const size_t entries = facts["pagemap"]["entries"].size();
  const size_t all_pages = static_cast<size_t>(facts["pagemap"]["totals"]["pages"].num());
  const uint64_t dst_id = (static_cast<uint64_t>(facts["workload"]["ns_pid"].num()) << PS_TYPE_BITS) | PS_TYPE_PID;
  const DataArea area = data_area(version, "upload");
  const std::vector<Message> msgs = parse_client(format, c2s, (what + " c2s").c_str());
  CHECK(msgs.size() == entries + 2 && msgs.size() == static_cast<size_t>(facts["stream"]["c2s_messages"].num()), "%s: %zu messages", what.c_str(), msgs.size());
  CHECK(c2s.size() == msgs.size() * header_size(format) + all_pages * kPage, "%s: c2s size %zu", what.c_str(), c2s.size());
  CHECK(detect(c2s.data(), c2s.size(), kPage) == format, "%s: detect(OPEN2)", what.c_str());
  CHECK(detect(s2c.data(), s2c.size(), kPage) == Format::Unknown, "%s: detect(5-byte s2c)", what.c_str());

  CHECK(msgs[0].header.command() == PS_IOV_OPEN2 && msgs[0].header.dst_id == dst_id,
        "%s: OPEN2 dst_id 0x%" PRIx64, what.c_str(), dst_id);
  std::vector<int> seen(area.pages, 0);
  size_t pages = 0;
  for (size_t i = 0; i < msgs.size(); ++i) {
    const Header& h = msgs[i].header;
    CHECK(h.pad == 0, "%s: upload pad is 0", what.c_str());
    CHECK(detect(c2s.data() + msgs[i].offset, header_size(format), kPage) ==
              (h.command() == PS_IOV_CLOSE ? Format::Unknown : format),
          "%s: detect(message %zu)", what.c_str(), i);
    if (i == 0 || i + 1 == msgs.size()) continue;
    CHECK(h.command() == PS_IOV_ADD_F && h.dst_id == dst_id, "%s: message %zu is not ADD_F for the dumped pid", what.c_str(), i);
    CHECK(h.flags() == PE_PRESENT || h.flags() == (PE_PRESENT | PE_LAZY), "%s: flags %u", what.c_str(), h.flags());
    check_data_pages(area, h.vaddr, h.nr_pages, c2s.data() + msgs[i].offset + header_size(format), seen);
    pages += h.nr_pages;
  }
  CHECK(pages == all_pages, "%s: %zu pages uploaded", what.c_str(), pages);
  check_all_data_pages_once(seen, what.c_str());
  CHECK(s2c.size() == 5 && s2c[0] == 0 && get_i32(s2c.data() + 1) == 0, "%s: OPEN2 reply 0, CLOSE status 0", what.c_str());
}

struct DetectCase {
  const char* name;
  Bytes bytes;
  size_t page_size;
  Format expect;
};

// The same cases as DETECT_CASES in test/unit/wire.test.ts (keep the two tables in step).
void test_detect_edge_cases() {
  const uint64_t mib4 = PID_MAX_LIMIT;  // 4 MiB == PID_MAX_LIMIT == 0x400000
  const uint32_t add_f = make_cmd(PS_IOV_ADD_F, PE_PRESENT);
  const Format U = Format::Unknown, V24 = Format::V24, V32 = Format::V32;
  const std::string text = "GET /lazy-pages HTTP/1.1\r\nHost: x\r\n";
  auto cut = [](Bytes b, size_t n) { b.resize(n); return b; };
  const std::vector<DetectCase> cases = {
      // CLOSE and FORCE_CLOSE: zeros in both layouts, answered without deciding.
      {"CLOSE, 24 bytes", h24(PS_IOV_CLOSE, 0, 0, 0), kPage, U},
      {"CLOSE, 32 bytes", h32(PS_IOV_CLOSE, 0, 0, 0, 0), kPage, U},
      {"CLOSE, 32 bytes with pad garbage", h32(PS_IOV_CLOSE, 0x5555, 0, 0, 0), kPage, U},
      {"FORCE_CLOSE", h24(PS_IOV_FORCE_CLOSE, 0, 0, 0), kPage, U},
      // Garbage.
      {"all 0xff", Bytes(32, 0xff), kPage, U},
      {"all zero (command 0)", Bytes(32, 0), kPage, U},
      {"unknown command 8", h24(8, 1, 0x7ffff7dbd000, 1), kPage, U},
      {"unknown command 0x1025", h24(0x1025, 1, 0x7ffff7dbd000, 1), kPage, U},
      {"ASCII text", Bytes(text.begin(), text.end()), kPage, U},
      {"a valid GET cut to 23 bytes", cut(h24(PS_IOV_GET, 1, 0x7ffff7dbd000, 1), 23), kPage, U},
      {"empty", Bytes(), kPage, U},
      // GET at the PID_MAX_LIMIT / 4 MiB boundary.
      {"GET24 pid 4194304 vaddr 4M+4K", h24(PS_IOV_GET, 1, mib4 + 0x1000, mib4), kPage, V24},
      {"GET32 pid 4194304 vaddr 4M+4K", h32(PS_IOV_GET, 0, 1, mib4 + 0x1000, mib4), kPage, V32},
      {"GET32 pad 0x5555 pid 4194304 vaddr 4M+4K", h32(PS_IOV_GET, 0x5555, 1, mib4 + 0x1000, mib4), kPage, V32},
      {"GET24 pid 4194305 (above PID_MAX_LIMIT)", h24(PS_IOV_GET, 1, mib4 + 0x1000, mib4 + 1), kPage, U},
      {"GET32 vaddr exactly 4M (ambiguous zone)", h32(PS_IOV_GET, 0x5555, 1, mib4, 1), kPage, U},
      {"GET32 vaddr 4K (ambiguous zone)", h32(PS_IOV_GET, 0, 1, 0x1000, 1), kPage, U},
      // Documented limit: a 32-byte GET below 4 MiB + 1 page whose nr_pages is a page multiple reads as 24.
      {"GET32 vaddr 4M nr 4096 pad 1 (documented limit)", h32(PS_IOV_GET, 1, 4096, mib4, 1), kPage, V24},
      // Malformed GETs.
      {"GET24 pid 0", h24(PS_IOV_GET, 1, 0x7ffff7dbd000, 0), kPage, U},
      {"GET24 nr_pages 0", h24(PS_IOV_GET, 0, 0x7ffff7dbd000, 1), kPage, U},
      {"GET24 vaddr 0", h24(PS_IOV_GET, 1, 0, 1), kPage, U},
      {"GET24 vaddr unaligned", h24(PS_IOV_GET, 1, 0x7ffff7dbd800, 1), kPage, U},
      {"GET24 vaddr 4K pid 1", h24(PS_IOV_GET, 1, 0x1000, 1), kPage, V24},
      {"GET24 with flags in cmd", h24(make_cmd(PS_IOV_GET, PE_PRESENT), 1, 0x7ffff7dbd000, 1), kPage, V24},
      {"GET32 nr_pages 0", h32(PS_IOV_GET, 0x5555, 0, 0x7ffff7dbd000, 1), kPage, U},
      {"GET32 nr_pages 2^32-1", h32(PS_IOV_GET, 0, 0xffffffffull, 0x7ffff7dbd000, 1), kPage, V32},
      {"GET32 nr_pages 2^32", h32(PS_IOV_GET, 0, 1ull << 32, 0x7ffff7dbd000, 1), kPage, U},
      {"GET32 vaddr unaligned", h32(PS_IOV_GET, 0, 1, 0x7ffff7dbd800, 1), kPage, U},
      {"GET32, only the first 24 bytes", cut(h32(PS_IOV_GET, 0x5555, 1, 0x7ffff7dbd000, 1), 24), kPage, V32},
      // Page size: 64 KiB pages need 64 KiB alignment.
      {"GET32 vaddr 4K-aligned, 64K pages", h32(PS_IOV_GET, 0, 1, 0x7ffff7dbd000, 1), 65536, U},
      {"GET32 vaddr 64K-aligned, 64K pages", h32(PS_IOV_GET, 0, 1, 0x7ffff7dc0000, 1), 65536, V32},
      {"GET24 vaddr 64K-aligned, 64K pages", h24(PS_IOV_GET, 1, 0x7ffff7dc0000, 1), 65536, V24},
      // Upload commands: the type byte of a 24-byte dst_id (never 0) vs a page-aligned 32-byte vaddr.
      {"OPEN2 24", h24(PS_IOV_OPEN2, 0, 0, 0x101), kPage, V24},
      {"OPEN2 32", h32(PS_IOV_OPEN2, 0, 0, 0, 0x101), kPage, V32},
      {"OPEN 24 shmem", h24(PS_IOV_OPEN, 0, 0, (77u << 8) | 2), kPage, V24},
      {"PARENT 24", h24(PS_IOV_PARENT, 0, 0, 0x101), kPage, V24},
      {"PARENT 32", h32(PS_IOV_PARENT, 0, 0, 0, 0x101), kPage, V32},
      {"HOLE 24", h24(PS_IOV_HOLE, 3, 0x7ffff7dbd000, 0x101), kPage, V24},
      {"ADD 32", h32(PS_IOV_ADD, 0, 1, 0x7ffff7dbd000, 0x101), kPage, V32},
      {"ADD_F 24 legacy type 10", h24(add_f, 1, 0x7ffff7dbd000, (1u << 8) | 10), kPage, V24},
      {"ADD_F 24 pid 256 (dst_id 0x10001)", h24(add_f, 1, 0x7ffff7dbd000, 0x10001), kPage, V24},
      // A 32-byte ADD_F as the first header ("IO w/o open"): u64@16 is a nonzero vaddr, its low byte 0.
      {"ADD_F 32 without OPEN2", h32(add_f, 0, 1, 0x7ffff7dbd000, 0x101), kPage, V32},
      {"ADD_F 32 shmem offset 0", h32(add_f, 0, 1, 0, (5u << 8) | 2), kPage, V32},
      {"ADD_F 32 reply with pad garbage", h32(GET_REPLY_CMD, 0x5555, 1, 0x7ffff7dbd000, 1), kPage, V32},
      {"ADD_F 24 reply", h24(GET_REPLY_CMD, 1, 0x7ffff7dbd000, 1), kPage, V24},
      // detect() checks only the low byte of u64@16 for upload commands; malformed ones still get a layout.
      {"ADD_F u64@16 = 0x100 (malformed either way)", h24(add_f, 1, 0x1000, 0x100), kPage, V32},
  };
  for (const DetectCase& c : cases) {
    const Format got = detect(c.bytes.data(), c.bytes.size(), c.page_size);
    CHECK(got == c.expect, "detect(%s) = %d, expected %d", c.name, static_cast<int>(got), static_cast<int>(c.expect));
  }
}

void test_codec_details() {
  // docs/protocol.md §1.2: GET one page at 0x7f0000001000 for pid 1234, 24-byte layout.
  const uint8_t example[24] = {0x07, 0, 0, 0, 0x01, 0, 0, 0, 0x00, 0x10, 0, 0, 0x00, 0x7f, 0, 0, 0xd2, 0x04, 0, 0, 0, 0, 0, 0};
  Header get;
  get.cmd = PS_IOV_GET;
  get.nr_pages = 1;
  get.vaddr = 0x7f0000001000ull;
  get.dst_id = 1234;
  uint8_t out[HEADER_SIZE_MAX];
  CHECK(encode(Format::V24, get, out) && std::memcmp(out, example, 24) == 0, "doc example, 24 bytes");
  const Header back = decode(Format::V24, example);
  CHECK(back.cmd == get.cmd && back.pad == 0 && back.nr_pages == 1 && back.vaddr == get.vaddr && back.dst_id == 1234,
        "doc example decodes");

  Header wide;
  wide.cmd = 0xffffffffu;
  wide.pad = 0xfffffffeu;
  wide.nr_pages = UINT64_MAX;
  wide.vaddr = UINT64_MAX - 1;
  wide.dst_id = 1ull << 63;
  CHECK(encode(Format::V32, wide, out), "encode wide V32");
  const Header w2 = decode(Format::V32, out);
  CHECK(w2.cmd == wide.cmd && w2.pad == wide.pad && w2.nr_pages == wide.nr_pages && w2.vaddr == wide.vaddr &&
            w2.dst_id == wide.dst_id,
        "wide V32 round trip");
  CHECK(!encode(Format::V24, wide, out), "V24 refuses nr_pages >= 2^32");
  Header max24 = get;
  max24.nr_pages = UINT32_MAX;
  CHECK(encode(Format::V24, max24, out) && decode(Format::V24, out).nr_pages == UINT32_MAX, "V24 nr_pages 2^32-1");
  CHECK(!encode(Format::Unknown, get, out), "encode(Unknown) fails");
  Header padded = get;
  padded.pad = 9;
  CHECK(encode(Format::V24, padded, out) && std::memcmp(out, example, 24) == 0, "V24 does not send pad");

  CHECK(GET_REPLY_CMD == 0x00040006u, "GET_REPLY_CMD");
  Header reply;
  reply.cmd = 0x00060006u;
  CHECK(reply.command() == PS_IOV_ADD_F && reply.flags() == (PE_LAZY | PE_PRESENT), "command()/flags()");
  CHECK(header_size(Format::V24) == 24 && header_size(Format::V32) == 32, "header_size");
  CHECK(std::strcmp(command_name(PS_IOV_FORCE_CLOSE), "FORCE_CLOSE") == 0, "command_name(FORCE_CLOSE)");
  CHECK(std::strcmp(command_name(99), "unknown") == 0, "command_name(99)");

  // kConstants: unique names; spot values.
  std::set<std::string> names;
  for (size_t i = 0; i < kConstantCount; ++i) {
    CHECK(names.insert(kConstants[i].name).second, "kConstants lists %s twice", kConstants[i].name);
    if (std::strcmp(kConstants[i].name, "PS_IOV_GET") == 0) CHECK(kConstants[i].value == 7, "PS_IOV_GET");
    if (std::strcmp(kConstants[i].name, "PID_MAX_LIMIT") == 0) CHECK(kConstants[i].value == 4194304, "PID_MAX_LIMIT");
  }
  CHECK(names.count("GET_REPLY_CMD") == 1 && names.count("HEADER_SIZE_V32") == 1, "kConstants names");
}

}  // namespace

int main() {
  test_codec_details();
  test_detect_edge_cases();
  test_remote_lazy("4.1.1", Format::V24);
  test_remote_lazy("4.2.1", Format::V32);
  test_upload("4.1.1", Format::V24);
  test_upload("4.2.1", Format::V32);
  std::printf("%d passed, 0 failed\n", g_passed);
  return 0;
}
