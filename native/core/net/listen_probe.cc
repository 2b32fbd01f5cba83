#include "net/listen_probe.h"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace lazyd::net {
namespace {

constexpr int kTcpListen = 10;  // TCP_LISTEN, include/net/tcp_states.h

int dump_family(int nl, int family, uint16_t port, std::vector<ListenSocket>* out) {
  struct {
    nlmsghdr head;
    inet_diag_req_v2 req;
  } msg{};
  msg.head.nlmsg_len = sizeof msg;
  msg.head.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.head.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.req.sdiag_family = static_cast<uint8_t>(family);
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = 1u << kTcpListen;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl, &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) return -errno;
  alignas(nlmsghdr) char buf[16384];
  for (;;) {
    const ssize_t got = recv(nl, buf, sizeof buf, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return -errno;
    if (got == 0) return -EIO;
    int len = static_cast<int>(got);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        // A kernel without IPv6 (or without tcp_diag for a family) answers ENOENT: nothing listens there.
        return err->error == -ENOENT ? 0 : (err->error ? err->error : -EIO);
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
      const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      if (m->idiag_state != kTcpListen || ntohs(m->id.idiag_sport) != port) continue;
      char text[INET6_ADDRSTRLEN] = {};
      if (!inet_ntop(m->idiag_family, m->id.idiag_src, text, sizeof text)) continue;
      out->push_back(ListenSocket{text, port});
    }
  }
}

}  // namespace

int tcp_listening(uint16_t port, std::vector<ListenSocket>* out) {
  const int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return -errno;
  int rc = dump_family(nl, AF_INET, port, out);
  if (rc == 0) rc = dump_family(nl, AF_INET6, port, out);
  close(nl);
  return rc;
}

}  // namespace lazyd::net
