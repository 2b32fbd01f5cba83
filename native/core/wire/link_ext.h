// The lazyd-to-lazyd link extension (docs/protocol.md §7): the HELLO a lazyd lazy-pages sends first, and only
// when the capability file lazyd-link.json in its images says the page server is lazyd, and the server's answer.
// A stock CRIU peer never sees these bytes: a lazyd client sends HELLO only after reading the file a lazyd page
// server wrote, and a lazyd server sends a HELLO reply only in answer to a HELLO.
//
// HELLO sits where a page_server_iov header starts, so the server tells it from a CRIU request by the u32 cmd
// slot: kHelloMagic's low 16 bits (the command, §1.3) are no CRIU command, so a criu page server would refuse it
// and lazyd's header detection reports it as Unknown.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace lazyd::wire {

constexpr uint32_t kHelloMagic = 0x4c5a4b48;       // "HKZL" in memory; command 0x4b48 is no CRIU command
constexpr uint32_t kLinkVersion = 1;
constexpr uint64_t kFeatureBind = 1;               // the session fetches only the checkpoint the token names
constexpr uint64_t kFeatureChecksum = 2;           // every GET reply ends in one CRC32C per page (wire/page_checksums.h)
// The restore's second connection to the same checkpoint (same token), for demand faults and their fault-around
// only: no drain byte is ever queued ahead of them. Asked by that connection's HELLO, never by the main one.
constexpr uint64_t kFeaturePriority = 4;
// The client reconnects a cut session (same token) and asks again what was unanswered: the server keeps the
// checkpoint reachable by its token for a hold time after such a session ends without CLOSE, even if released.
constexpr uint64_t kFeatureResume = 8;
constexpr uint64_t kKnownFeatures = kFeatureBind | kFeatureChecksum | kFeaturePriority | kFeatureResume;
constexpr size_t kTokenSize = 16;
constexpr size_t kHelloSize = 32;                  // u32 magic, u32 version, u64 features, 16-byte token
constexpr size_t kHelloReplySize = 32;             // u32 magic, u32 version, u64 features, i32 status, u32 0, u64 checkpoint

using LinkToken = std::array<uint8_t, kTokenSize>;

struct Hello {
  uint32_t version = kLinkVersion;
  uint64_t features = 0;
  LinkToken token{};
};

struct HelloReply {
  uint32_t version = kLinkVersion;
  uint64_t features = 0;   // what the server grants: a subset of the HELLO's
  int32_t status = 0;      // 0, or -errno: -EACCES (no checkpoint has the token), -EPROTONOSUPPORT (version)
  uint64_t checkpoint = 0; // the staged checkpoint the session is bound to
};

// True when the first 4 bytes (len >= 4) are the HELLO magic.
bool starts_with_hello(const uint8_t* in, size_t len);

void encode_hello(const Hello& hello, uint8_t out[kHelloSize]);
// False when the magic is wrong.
bool decode_hello(const uint8_t in[kHelloSize], Hello* hello);

void encode_hello_reply(const HelloReply& reply, uint8_t out[kHelloReplySize]);
// False when the magic is wrong or the reserved word is not 0.
bool decode_hello_reply(const uint8_t in[kHelloReplySize], HelloReply* reply);

// The token as 32 lower-case hex digits (lazyd-link.json), and back; false for anything else.
void token_to_hex(const LinkToken& token, char out[2 * kTokenSize + 1]);
bool token_from_hex(const char* text, size_t len, LinkToken* token);

// 16 random bytes from getrandom(2). Returns 0 or -errno.
int random_token(LinkToken* token);

}  // namespace lazyd::wire
