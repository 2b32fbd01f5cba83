// Who may connect to the page server, and for what (--allow-from, --allow-fetch-from, --allow-upload-from;
// --tls-allow-name and its per-permission forms). Pure data and matching: the page server asks it at accept
// (before a byte is read from the peer) and again when the session's first command shows what it is.
//
// Rules: with no address list at all, every address may do everything (the listening default keeps such a
// server on loopback). Once any address list is given, a peer may fetch only if --allow-from or
// --allow-fetch-from covers it and upload only if --allow-from or --allow-upload-from covers it; a peer that no
// list covers is refused at accept. The names lists (TLS only) work the same way against the peer's certificate,
// on top of the chain and CRL checks. IPv4 peers of a dual-stack listener arrive as ::ffff:a.b.c.d and are
// matched against IPv4 lists as IPv4.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace lazyd {

enum class Permission { kFetch, kUpload };

// One CIDR block, held as IPv6 (an IPv4 block as its v4-mapped form, prefix + 96).
struct Cidr {
  uint8_t addr[16] = {};
  int prefix = 0;
  bool contains(const uint8_t address[16]) const;
};

// "10.0.0.0/8", "2001:db8::/32", "192.0.2.7" (a host: /32 or /128). false with *error one line naming the fix.
bool parse_cidr(const std::string& text, Cidr* out, std::string* error);

// A connected peer's address as IPv6 bytes (IPv4 mapped), and its text without the port (the log's key).
struct PeerAddress {
  bool known = false;
  uint8_t addr[16] = {};
  std::string host;  // "10.0.0.2", "2001:db8::1"
};
PeerAddress peer_address(int fd);

struct AccessPolicy {
  std::vector<Cidr> fetch_from;   // --allow-from + --allow-fetch-from
  std::vector<Cidr> upload_from;  // --allow-from + --allow-upload-from
  std::vector<std::string> fetch_names;   // --tls-allow-name + --tls-allow-fetch-name
  std::vector<std::string> upload_names;  // --tls-allow-name + --tls-allow-upload-name

  bool by_address() const { return !fetch_from.empty() || !upload_from.empty(); }
  bool by_name() const { return !fetch_names.empty() || !upload_names.empty(); }
  // Whether the address may do this.
  bool address_allows(const PeerAddress& peer, Permission permission) const;
  // The names the peer's certificate must carry one of for this permission (empty and by_name(): none will do).
  const std::vector<std::string>& names_for(Permission permission) const {
    return permission == Permission::kFetch ? fetch_names : upload_names;
  }
};

// "fetch" / "upload", and the flags that grant it, for messages.
const char* permission_name(Permission permission);
const char* address_flags(Permission permission);
const char* name_flags(Permission permission);

// Refusals are logged at most once per peer host per interval (a refused host that reconnects in a loop must not
// flood the log); the rest are counted and the next logged line says how many were not.
class RefusalLog {
 public:
  explicit RefusalLog(uint64_t interval_ns) : interval_ns_(interval_ns) {}
  // true: log this one (*unlogged: refusals of this host since its last logged line). false: only count it.
  bool should_log(const std::string& host, uint64_t now_ns, uint64_t* unlogged);

 private:
  struct Seen {
    uint64_t logged_ns = 0;
    uint64_t unlogged = 0;
  };
  uint64_t interval_ns_;
  std::unordered_map<std::string, Seen> seen_;
  uint64_t last_prune_ns_ = 0;
};

}  // namespace lazyd
