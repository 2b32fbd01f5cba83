// systemd's readiness protocol (sd_notify(3)): one datagram of "KEY=value\n..." lines sent to the AF_UNIX
// SOCK_DGRAM socket named by $NOTIFY_SOCKET. A name starting with '@' is in the abstract namespace. Node's dgram
// module cannot send to unix datagram sockets, hence this.
#pragma once

#include <string>

namespace lazyd {

// Sends `text` as one datagram to `socket_path`. Returns 0 or -errno (-EINVAL for an empty or too long path).
int sd_notify_send(const std::string& socket_path, const std::string& text);

}  // namespace lazyd
