// The X.509 credentials of one daemon for `--tls` (docs/protocol.md §1.9), loaded once at start-up with CRIU's flags
// and defaults, and the peer check every TLS session runs during its handshake.
//
// What CRIU does, and so lazyd:
//   - mutual authentication: both ends present a certificate, and the server requires the client's;
//   - trust: --tls-cacert (default /etc/pki/CA/cacert.pem); when it is NOT given, the system trust store is
//     loaded too and a missing default file is no error;
//   - revocation: --tls-cacrl (default /etc/pki/CA/cacrl.pem), used when readable; given and unreadable is an
//     error;
//   - own identity: --tls-cert (default /etc/pki/criu/cert.pem) and --tls-key (/etc/pki/criu/private/key.pem);
//   - the peer's certificate must name --address (on the server too, where it is the bind address), unless
//     --tls-no-cn-verify or no --address at all.
// Unlike CRIU, the check runs inside the handshake (gnutls_session_set_verify_cert), so a refused peer gets a TLS
// alert saying why (revoked, unknown CA, bad certificate) instead of a silently closed connection.
#pragma once

#include <gnutls/gnutls.h>

#include <memory>
#include <string>

namespace lazyd {

constexpr const char* kTlsDefaultCaCert = "/etc/pki/CA/cacert.pem";
constexpr const char* kTlsDefaultCaCrl = "/etc/pki/CA/cacrl.pem";
constexpr const char* kTlsDefaultCert = "/etc/pki/criu/cert.pem";
constexpr const char* kTlsDefaultKey = "/etc/pki/criu/private/key.pem";

struct TlsOptions {
  std::string cacert;  // "" : kTlsDefaultCaCert, plus the system trust store
  std::string cacrl;   // "" : kTlsDefaultCaCrl if readable
  std::string cert;    // "" : kTlsDefaultCert
  std::string key;     // "" : kTlsDefaultKey
  bool no_cn_verify = false;
  std::string peer_name;  // --address: the name the peer's certificate must carry ("" : not checked)
};

class TlsContext {
 public:
  // Loads the credentials. nullptr on failure, with *error one line naming the file, the cause and the fix.
  static std::shared_ptr<TlsContext> create(const TlsOptions& options, std::string* error);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  gnutls_certificate_credentials_t credentials() const { return credentials_; }
  // The name checked against the peer's certificate, or nullptr (--tls-no-cn-verify, or no --address).
  const char* expected_name() const;
  // Files in use, for messages: "CA /x", "CRL /y (none)".
  const std::string& cacert_path() const { return cacert_; }
  const std::string& cacrl_path() const { return cacrl_; }  // "" when no CRL is loaded
  const TlsOptions& options() const { return options_; }
  // Informational notes from loading (e.g. the default CA file is missing, system trust used), for the log.
  const std::string& notes() const { return notes_; }

  // Why a peer certificate with this verification status is refused: one sentence with the fix.
  std::string describe_verify_status(unsigned status) const;

 private:
  explicit TlsContext(const TlsOptions& options) : options_(options) {}
  TlsOptions options_;
  gnutls_certificate_credentials_t credentials_ = nullptr;
  std::string cacert_;
  std::string cacrl_;
  std::string notes_;
};

}  // namespace lazyd
