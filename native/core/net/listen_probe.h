// Which TCP sockets LISTEN on a port in this network namespace, asked of the kernel's sock_diag netlink interface
// (NETLINK_SOCK_DIAG, inet_diag). Relay staging waits this way for `criu dump --lazy-pages` to serve: a probe
// connect would be the dump's one client, and its close an EOF the dump takes for a finished transfer (docs/
// protocol.md §1.7). A dump for LISTEN sockets only walks the kernel's listening hash, where reading
// /proc/net/tcp walks every established-socket bucket (milliseconds per read on a large machine).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lazyd::net {

struct ListenSocket {
  std::string address;  // as inet_ntop prints it: "127.0.0.1", "::", "::ffff:127.0.0.1"
  uint16_t port = 0;
};

// Appends the IPv4 and IPv6 LISTEN sockets bound to port to *out. 0 or -errno (no netlink, or refused).
int tcp_listening(uint16_t port, std::vector<ListenSocket>* out);

}  // namespace lazyd::net
