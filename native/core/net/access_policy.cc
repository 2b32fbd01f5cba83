#include "net/access_policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace lazyd {
namespace {

constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
// At most this many refused hosts are remembered (their entries are pruned once their interval has passed).
constexpr size_t kMaxTrackedHosts = 4096;

void map_v4(const in_addr& v4, uint8_t out[16]) {
  memcpy(out, kV4MappedPrefix, 12);
  memcpy(out + 12, &v4, 4);
}

}  // namespace

bool Cidr::contains(const uint8_t address[16]) const {
  const int whole = prefix / 8;
  if (memcmp(addr, address, static_cast<size_t>(whole)) != 0) return false;
  const int rest = prefix % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (addr[whole] & mask) == (address[whole] & mask);
}

bool parse_cidr(const std::string& text, Cidr* out, std::string* error) {
  if (text.find('\0') != std::string::npos) {
    *error = "an address block holds a NUL byte";
    return false;
  }
  const size_t slash = text.find('/');
  const std::string host = text.substr(0, slash);
  in_addr v4{};
  in6_addr v6{};
  int max_prefix;
  Cidr cidr;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    map_v4(v4, cidr.addr);
    max_prefix = 32;
  } else if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    memcpy(cidr.addr, &v6, 16);
    max_prefix = 128;
  } else {
    *error = "\"" + text + "\" is not an address block: write a numeric IPv4 or IPv6 address with an optional /prefix (10.0.0.0/8, 2001:db8::/32)";
    return false;
  }
  int prefix = max_prefix;
  if (slash != std::string::npos) {
    const std::string digits = text.substr(slash + 1);
    if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(digits) > max_prefix) {
      *error = "\"" + text + "\": the prefix length must be 0.." + std::to_string(max_prefix);
      return false;
    }
    prefix = std::stoi(digits);
  }
  cidr.prefix = max_prefix == 32 ? prefix + 96 : prefix;
  // Bits below the prefix are ignored when matching; clear them so equal blocks compare equal.
  for (int bit = cidr.prefix; bit < 128; bit++) cidr.addr[bit / 8] &= static_cast<uint8_t>(~(0x80 >> (bit % 8)));
  *out = cidr;
  return true;
}

PeerAddress peer_address(int fd) {
  PeerAddress peer;
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&storage), &length) < 0) return peer;
  char text[INET6_ADDRSTRLEN] = "";
  if (storage.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&storage);
    map_v4(v4->sin_addr, peer.addr);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
  } else if (storage.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    memcpy(peer.addr, &v6->sin6_addr, 16);
    if (memcmp(peer.addr, kV4MappedPrefix, 12) == 0) {
      inet_ntop(AF_INET, peer.addr + 12, text, sizeof text);  // an IPv4 peer of a dual-stack listener
    } else {
      inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
    }
  } else {
    return peer;
  }
  peer.known = true;
  peer.host = text;
  return peer;
}

bool AccessPolicy::address_allows(const PeerAddress& peer, Permission permission) const {
  if (!by_address()) return true;
  if (!peer.known) return false;
  const std::vector<Cidr>& blocks = permission == Permission::kFetch ? fetch_from : upload_from;
  for (const Cidr& block : blocks) {
    if (block.contains(peer.addr)) return true;
  }
  return false;
}

const char* permission_name(Permission permission) { return permission == Permission::kFetch ? "fetch" : "upload"; }

const char* address_flags(Permission permission) {
  return permission == Permission::kFetch ? "--allow-from or --allow-fetch-from" : "--allow-from or --allow-upload-from";
}

const char* name_flags(Permission permission) {
  return permission == Permission::kFetch ? "--tls-allow-name or --tls-allow-fetch-name"
                                          : "--tls-allow-name or --tls-allow-upload-name";
}

bool RefusalLog::should_log(const std::string& host, uint64_t now_ns, uint64_t* unlogged) {
  if (seen_.size() >= kMaxTrackedHosts && now_ns - last_prune_ns_ > interval_ns_) {
    for (auto it = seen_.begin(); it != seen_.end();) {
      it = now_ns - it->second.logged_ns > interval_ns_ ? seen_.erase(it) : std::next(it);
    }
    last_prune_ns_ = now_ns;
  }
  auto found = seen_.find(host);
  if (found != seen_.end() && now_ns - found->second.logged_ns < interval_ns_) {
    found->second.unlogged++;
    return false;
  }
  if (found == seen_.end() && seen_.size() >= kMaxTrackedHosts) {
    return false;  // the table is full of hosts logged within the interval: a flood; they are counted in the metric
  }
  Seen& entry = seen_[host];
  *unlogged = entry.unlogged;
  entry.unlogged = 0;
  entry.logged_ns = now_ns;
  return true;
}

}  // namespace lazyd
