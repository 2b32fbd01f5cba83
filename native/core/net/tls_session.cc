#include "net/tls_session.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/x509.h>

#include "util/text.h"
#include "wire/wire.h"

namespace lazyd {
namespace {

// The socket is non-blocking; MSG_NOSIGNAL: a peer that went away is an error, never SIGPIPE.
ssize_t push(gnutls_transport_ptr_t ptr, const void* data, size_t len) {
  return ::send(static_cast<int>(reinterpret_cast<intptr_t>(ptr)), data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

ssize_t pull(gnutls_transport_ptr_t ptr, void* data, size_t len) {
  return ::recv(static_cast<int>(reinterpret_cast<intptr_t>(ptr)), data, len, MSG_DONTWAIT);
}

int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms) {
  pollfd pfd{static_cast<int>(reinterpret_cast<intptr_t>(ptr)), POLLIN, 0};
  int rc = poll(&pfd, 1, static_cast<int>(ms));
  return rc < 0 ? -1 : rc;
}

// What a fatal alert from the peer most likely means about OUR side.
std::string alert_hint(gnutls_alert_description_t alert) {
  switch (alert) {
    case GNUTLS_A_CERTIFICATE_REVOKED:
      return "it found our certificate revoked (its --tls-cacrl)";
    case GNUTLS_A_UNKNOWN_CA:
      return "it does not trust the CA that signed our certificate (its --tls-cacert)";
    case GNUTLS_A_BAD_CERTIFICATE:
      return "it refused our certificate (e.g. the certificate does not name its --address; "
             "give ours that name, or run the peer with --tls-no-cn-verify)";
    case GNUTLS_A_CERTIFICATE_EXPIRED:
      return "it found our certificate expired";
    case GNUTLS_A_CERTIFICATE_REQUIRED:
    case GNUTLS_A_HANDSHAKE_FAILURE:
      return "it requires a certificate from us (--tls-cert/--tls-key) or shares no cipher with us";
    default:
      return "";
  }
}

// Bytes shown of a peer that did not start a TLS handshake.
constexpr size_t kShownBytes = 16;

// The command of the page-server header (either layout) that bytes start with, or null when they do not parse
// as one: a known command, and a header that fits (detect()), or the all-zero fields of a CLOSE.
const char* page_server_header(const uint8_t* bytes, size_t len) {
  if (len < wire::HEADER_SIZE_V24) return nullptr;
  const wire::Header header = wire::decode(wire::Format::V24, bytes);
  const uint32_t command = header.command();
  if (command == wire::PS_IOV_CLOSE || command == wire::PS_IOV_FORCE_CLOSE) {
    // Both layouts: nr_pages, vaddr and dst_id zero from byte 8 on (the 32-byte padding at 4..7 is never read).
    for (size_t i = 8; i < wire::HEADER_SIZE_V24; i++)
      if (bytes[i] != 0) return nullptr;
    return header.flags() == 0 ? wire::command_name(command) : nullptr;
  }
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return wire::detect(bytes, len, page_size) == wire::Format::Unknown ? nullptr : wire::command_name(command);
}

// Why a server's peer is not a TLS client, from the first bytes it sent (not a ClientHello).
std::string not_tls(const uint8_t* bytes, size_t len) {
  if (const char* command = page_server_header(bytes, len)) {
    return std::string("the peer speaks the plain page-server protocol, not TLS (its first bytes are a page-server ") +
           command + " header, not a TLS ClientHello): run it with --tls, or this server without";
  }
  const size_t shown = std::min(len, kShownBytes);
  return "the peer did not start a TLS handshake: its first " + std::to_string(shown) + " bytes are " +
         quoted_bytes(bytes, shown) + " (" + hex_bytes(bytes, shown) +
         "), neither a TLS ClientHello nor a page-server header; this port takes CRIU page-server clients run with "
         "--tls";
}

}  // namespace

bool looks_like_tls(const uint8_t* bytes, size_t len) {
  // A TLS record header: content type 22 (handshake), then major version 3.
  return len >= 2 && bytes[0] == 22 && bytes[1] == 3;
}

std::unique_ptr<TlsSession> TlsSession::create(std::shared_ptr<const TlsContext> context, int fd, Role role,
                                               std::string* error) {
  std::unique_ptr<TlsSession> tls(new TlsSession());
  tls->context_ = std::move(context);
  tls->fd_ = fd;
  tls->role_ = role;
  int rc = gnutls_init(&tls->session_, (role == Role::kServer ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NONBLOCK);
  if (rc == GNUTLS_E_SUCCESS) {
    rc = gnutls_credentials_set(tls->session_, GNUTLS_CRD_CERTIFICATE, tls->context_->credentials());
  }
  // criu uses the library's default priorities (docs/protocol.md §1.9): the same here, so both ends agree on a suite.
  if (rc == GNUTLS_E_SUCCESS) rc = gnutls_set_default_priority(tls->session_);
  if (rc != GNUTLS_E_SUCCESS) {
    *error = std::string("TLS: cannot set up a session: ") + gnutls_strerror(rc);
    return nullptr;
  }
  if (role == Role::kServer) {
    // Mutual authentication, as criu: the client must present a certificate; the CA list is not advertised.
    gnutls_certificate_server_set_request(tls->session_, GNUTLS_CERT_REQUIRE);
    gnutls_certificate_send_x509_rdn_sequence(tls->session_, 1);
  }
  // The peer check runs inside the handshake, so a refused peer learns why from the alert.
  gnutls_session_set_verify_cert(tls->session_, tls->context_->expected_name(), 0);
  gnutls_handshake_set_timeout(tls->session_, 0);  // the caller bounds the handshake (epoll/poll timeouts)
  gnutls_transport_set_ptr(tls->session_, reinterpret_cast<gnutls_transport_ptr_t>(static_cast<intptr_t>(fd)));
  gnutls_transport_set_push_function(tls->session_, push);
  gnutls_transport_set_pull_function(tls->session_, pull);
  gnutls_transport_set_pull_timeout_function(tls->session_, pull_timeout);
  return tls;
}

TlsSession::~TlsSession() {
  if (session_) gnutls_deinit(session_);
}

int TlsSession::fail(std::string message) {
  if (error_.empty()) error_ = std::move(message);
  return -EPROTO;
}

std::string TlsSession::alert_text() const {
  const gnutls_alert_description_t alert = gnutls_alert_get(session_);
  const char* name = gnutls_alert_get_name(alert);
  std::string text = std::string("alert \"") + (name ? name : "?") + "\"";
  const std::string hint = alert_hint(alert);
  if (!hint.empty()) text += ": " + hint;
  return text;
}

int TlsSession::handshake() {
  if (established_) return 0;
  if (!error_.empty()) return -EPROTO;
  if (role_ == Role::kServer && !hello_seen_) {
    // A peer whose first byte does not start a TLS handshake record is not a TLS client: say what it sent (a plain
    // page-server header, or other bytes: an HTTP request...) rather than report a TLS parse error.
    uint8_t first[wire::HEADER_SIZE_MAX];
    const ssize_t n = ::recv(fd_, first, sizeof first, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return -EAGAIN;
      return fail(std::string("receive failed before the TLS handshake: ") + strerror(errno));
    }
    if (n == 0) return fail("the peer closed the connection before the TLS handshake");
    if (first[0] != 22) return fail(not_tls(first, static_cast<size_t>(n)));
    hello_seen_ = true;
  }
  for (;;) {
    const int rc = gnutls_handshake(session_);
    if (rc == GNUTLS_E_SUCCESS) {
      established_ = true;
      return 0;
    }
    if (rc == GNUTLS_E_AGAIN) return -EAGAIN;
    if (rc == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal(rc)) continue;  // EINTR, warning alerts
    // Tell the peer why (revoked, unknown CA, bad certificate...): gnutls leaves sending the alert to us. Best
    // effort on the non-blocking socket.
    if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
      const unsigned status = gnutls_session_get_verify_cert_status(session_);
      gnutls_alert_send(session_, GNUTLS_AL_FATAL,
                        (status & GNUTLS_CERT_REVOKED)            ? GNUTLS_A_CERTIFICATE_REVOKED
                        : (status & GNUTLS_CERT_SIGNER_NOT_FOUND) ? GNUTLS_A_UNKNOWN_CA
                        : (status & GNUTLS_CERT_EXPIRED)          ? GNUTLS_A_CERTIFICATE_EXPIRED
                                                                  : GNUTLS_A_BAD_CERTIFICATE);
    } else if (rc != GNUTLS_E_FATAL_ALERT_RECEIVED && rc != GNUTLS_E_PREMATURE_TERMINATION &&
               rc != GNUTLS_E_PULL_ERROR && rc != GNUTLS_E_PUSH_ERROR) {
      gnutls_alert_send_appropriate(session_, rc);
    }
    switch (rc) {
      case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
        return fail(context_->describe_verify_status(gnutls_session_get_verify_cert_status(session_)));
      case GNUTLS_E_FATAL_ALERT_RECEIVED:
        return fail("the peer refused the TLS handshake with " + alert_text());
      case GNUTLS_E_NO_CERTIFICATE_FOUND:
      case GNUTLS_E_CERTIFICATE_REQUIRED:
        return fail(role_ == Role::kServer
                        ? "the peer sent no certificate: TLS is mutual (as criu's), start it with --tls-cert/--tls-key"
                        : std::string("TLS handshake failed: ") + gnutls_strerror(rc));
      case GNUTLS_E_PREMATURE_TERMINATION:
      case GNUTLS_E_PULL_ERROR:
      case GNUTLS_E_PUSH_ERROR:
        return fail("the peer closed the connection during the TLS handshake (" + std::string(gnutls_strerror(rc)) +
                    "): does it run with --tls?");
      case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
      case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
      case GNUTLS_E_UNEXPECTED_PACKET:
        return fail(std::string("the peer does not speak TLS (") + gnutls_strerror(rc) +
                    "): run both ends with --tls, or neither");
      default:
        return fail(std::string("TLS handshake failed: ") + gnutls_strerror(rc));
    }
  }
}

bool TlsSession::handshake_wants_write() const { return gnutls_record_get_direction(session_) == 1; }

ssize_t TlsSession::recv(void* buf, size_t len) {
  if (!error_.empty()) return -EPROTO;
  for (;;) {
    const ssize_t n = gnutls_record_recv(session_, buf, len);
    if (n >= 0) return n;
    if (n == GNUTLS_E_AGAIN) return -EAGAIN;
    if (n == GNUTLS_E_INTERRUPTED) continue;
    // TCP closed without close_notify: the end of the stream, as for criu (the session decides whether that
    // came at a clean point).
    if (n == GNUTLS_E_PREMATURE_TERMINATION) return 0;
    if (n == GNUTLS_E_PULL_ERROR) {
      const int err = errno ? errno : ECONNRESET;
      fail(std::string("TLS receive failed: ") + strerror(err));
      return -err;
    }
    if (n == GNUTLS_E_FATAL_ALERT_RECEIVED) return fail("the peer ended the TLS session with " + alert_text());
    if (!gnutls_error_is_fatal(static_cast<int>(n))) continue;  // a warning alert, a session ticket
    return fail(std::string("TLS receive failed: ") + gnutls_strerror(static_cast<int>(n)));
  }
}

size_t TlsSession::max_record() const { return gnutls_record_get_max_size(session_); }

ssize_t TlsSession::send(const void* buf, size_t len) {
  if (!error_.empty()) return -EPROTO;
  for (;;) {
    // After -EAGAIN the record is already sealed inside gnutls: flush it (NULL, 0), then report its length.
    const size_t chunk = send_pending_ ? send_pending_ : std::min(len, max_record());
    const ssize_t n = send_pending_ ? gnutls_record_send(session_, nullptr, 0) : gnutls_record_send(session_, buf, chunk);
    if (n == GNUTLS_E_AGAIN) {
      send_pending_ = chunk;
      return -EAGAIN;
    }
    if (n == GNUTLS_E_INTERRUPTED) {
      send_pending_ = chunk;
      continue;
    }
    if (n < 0) {
      if (n == GNUTLS_E_PUSH_ERROR) {
        const int err = errno ? errno : EPIPE;
        fail(std::string("TLS send failed: ") + strerror(err));
        return -err;
      }
      return fail(std::string("TLS send failed: ") + gnutls_strerror(static_cast<int>(n)));
    }
    send_pending_ = 0;
    return static_cast<ssize_t>(chunk);
  }
}

size_t TlsSession::pending() const { return gnutls_record_check_pending(session_); }

void TlsSession::bye() {
  if (established_ && error_.empty()) gnutls_bye(session_, GNUTLS_SHUT_WR);
}

std::string TlsSession::description() const {
  char* desc = gnutls_session_get_desc(session_);
  if (!desc) return "TLS";
  std::string out = desc;
  gnutls_free(desc);
  return out;
}

}  // namespace lazyd

namespace lazyd {
namespace {

// The peer's leaf certificate, or nullptr (the caller deinits it).
gnutls_x509_crt_t peer_certificate(gnutls_session_t session) {
  unsigned count = 0;
  const gnutls_datum_t* chain = gnutls_certificate_get_peers(session, &count);
  if (chain == nullptr || count == 0) return nullptr;
  gnutls_x509_crt_t crt = nullptr;
  if (gnutls_x509_crt_init(&crt) != GNUTLS_E_SUCCESS) return nullptr;
  if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) != GNUTLS_E_SUCCESS) {
    gnutls_x509_crt_deinit(crt);
    return nullptr;
  }
  return crt;
}

}  // namespace

bool TlsSession::peer_named_one_of(const std::vector<std::string>& names) const {
  if (!established_ || names.empty()) return false;
  gnutls_x509_crt_t crt = peer_certificate(session_);
  if (crt == nullptr) return false;
  bool named = false;
  for (const std::string& name : names) {
    if (gnutls_x509_crt_check_hostname(crt, name.c_str()) != 0) {
      named = true;
      break;
    }
  }
  gnutls_x509_crt_deinit(crt);
  return named;
}

std::string TlsSession::peer_names() const {
  gnutls_x509_crt_t crt = established_ ? peer_certificate(session_) : nullptr;
  if (crt == nullptr) return "no certificate";
  std::string names;
  for (unsigned i = 0;; i++) {
    char value[256];
    size_t size = sizeof value;
    unsigned critical = 0;
    const int type = gnutls_x509_crt_get_subject_alt_name(crt, i, value, &size, &critical);
    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) break;
    if (type < 0) continue;
    std::string entry;
    if (type == GNUTLS_SAN_DNSNAME) entry = "DNS:" + std::string(value, size);
    else if (type == GNUTLS_SAN_IPADDRESS) {
      char text[INET6_ADDRSTRLEN] = "?";
      inet_ntop(size == 4 ? AF_INET : AF_INET6, value, text, sizeof text);
      entry = std::string("IP:") + text;
    } else {
      continue;
    }
    names += (names.empty() ? "" : ", ") + entry;
  }
  if (names.empty()) {
    char dn[512];
    size_t size = sizeof dn;
    names = gnutls_x509_crt_get_dn(crt, dn, &size) == GNUTLS_E_SUCCESS ? std::string(dn, size) : "no name";
  }
  gnutls_x509_crt_deinit(crt);
  return names;
}

}  // namespace lazyd
