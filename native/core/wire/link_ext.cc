#include "wire/link_ext.h"

#include <cerrno>
#include <cstring>
#include <sys/random.h>

namespace lazyd::wire {

namespace {

void put32(uint8_t* p, uint32_t v) { memcpy(p, &v, 4); }
void put64(uint8_t* p, uint64_t v) { memcpy(p, &v, 8); }
uint32_t get32(const uint8_t* p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
uint64_t get64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

bool starts_with_hello(const uint8_t* in, size_t len) { return len >= 4 && get32(in) == kHelloMagic; }

void encode_hello(const Hello& hello, uint8_t out[kHelloSize]) {
  put32(out, kHelloMagic);
  put32(out + 4, hello.version);
  put64(out + 8, hello.features);
  memcpy(out + 16, hello.token.data(), kTokenSize);
}

bool decode_hello(const uint8_t in[kHelloSize], Hello* hello) {
  if (get32(in) != kHelloMagic) return false;
  hello->version = get32(in + 4);
  hello->features = get64(in + 8);
  memcpy(hello->token.data(), in + 16, kTokenSize);
  return true;
}

void encode_hello_reply(const HelloReply& reply, uint8_t out[kHelloReplySize]) {
  put32(out, kHelloMagic);
  put32(out + 4, reply.version);
  put64(out + 8, reply.features);
  put32(out + 16, static_cast<uint32_t>(reply.status));
  put32(out + 20, 0);
  put64(out + 24, reply.checkpoint);
}

bool decode_hello_reply(const uint8_t in[kHelloReplySize], HelloReply* reply) {
  if (get32(in) != kHelloMagic || get32(in + 20) != 0) return false;
  reply->version = get32(in + 4);
  reply->features = get64(in + 8);
  reply->status = static_cast<int32_t>(get32(in + 16));
  reply->checkpoint = get64(in + 24);
  return true;
}

void token_to_hex(const LinkToken& token, char out[2 * kTokenSize + 1]) {
  static const char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < kTokenSize; i++) {
    out[2 * i] = kDigits[token[i] >> 4];
    out[2 * i + 1] = kDigits[token[i] & 15];
  }
  out[2 * kTokenSize] = '\0';
}

bool token_from_hex(const char* text, size_t len, LinkToken* token) {
  if (len != 2 * kTokenSize) return false;
  for (size_t i = 0; i < kTokenSize; i++) {
    const int hi = hex_digit(text[2 * i]);
    const int lo = hex_digit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*token)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

int random_token(LinkToken* token) {
  size_t got = 0;
  while (got < kTokenSize) {
    const ssize_t n = getrandom(token->data() + got, kTokenSize - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    got += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace lazyd::wire
