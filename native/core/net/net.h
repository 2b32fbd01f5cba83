// Small socket helpers shared by the page server and the page client.
#pragma once

#include <cstdint>
#include <string>

namespace lazyd::net {

// Binds and listens on a numeric IPv4/IPv6 address ("" means every IPv6+IPv4 address), with SO_REUSEADDR.
// port 0 lets the kernel choose; *bound_port receives the port. Returns the non-blocking fd, or -errno.
int listen_tcp(const std::string& address, uint16_t port, int backlog, uint16_t* bound_port);

int set_nonblocking(int fd);
int set_nodelay(int fd);

// SO_LINGER with a zero timeout (on) or the default (off). While on, every close of the socket — by close(), by
// an error path, or by the kernel when the process dies — sends a reset instead of a FIN. Returns 0 or -errno.
int set_reset_on_close(int fd, bool on);

// Closes a socket after discarding what the peer sent and we did not read (a bounded, non-blocking read):
// closing with unread bytes makes the kernel reset the connection, and the peer may then lose what we sent
// last (a TLS alert saying why we refused it).
void close_gently(int fd);

// "127.0.0.1:40312" or "[::1]:40312".
std::string peer_name(int fd);

}  // namespace lazyd::net
