#include "net/tls_context.h"

#include <gnutls/x509.h>

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace lazyd {
namespace {

// "" when path is readable, else why not ("No such file or directory").
std::string unreadable(const std::string& path) {
  if (access(path.c_str(), R_OK) == 0) return "";
  return strerror(errno);
}

}  // namespace

std::shared_ptr<TlsContext> TlsContext::create(const TlsOptions& options, std::string* error) {
  std::shared_ptr<TlsContext> context(new TlsContext(options));
  const bool cacert_given = !options.cacert.empty();
  const bool cacrl_given = !options.cacrl.empty();
  const std::string cacert = cacert_given ? options.cacert : kTlsDefaultCaCert;
  const std::string cacrl = cacrl_given ? options.cacrl : kTlsDefaultCaCrl;
  const std::string cert = options.cert.empty() ? kTlsDefaultCert : options.cert;
  const std::string key = options.key.empty() ? kTlsDefaultKey : options.key;

  int rc = gnutls_certificate_allocate_credentials(&context->credentials_);
  if (rc != GNUTLS_E_SUCCESS) {
    *error = std::string("TLS: cannot allocate credentials: ") + gnutls_strerror(rc);
    return nullptr;
  }

  // Trust: the system store only when --tls-cacert is not given (as criu, docs/protocol.md §1.9).
  int system_cas = 0;
  if (!cacert_given) {
    system_cas = gnutls_certificate_set_x509_system_trust(context->credentials_);
    if (system_cas < 0) system_cas = 0;  // no system store: only the default file counts
  }
  const std::string cacert_problem = unreadable(cacert);
  if (!cacert_problem.empty()) {
    if (cacert_given) {
      *error = "TLS: cannot read the CA certificate " + cacert + " (--tls-cacert): " + cacert_problem +
               " — pass the file of the CA that signed the peer's certificate";
      return nullptr;
    }
    context->notes_ = "no CA file " + cacert + " (" + cacert_problem + "); trusting the system store (" +
                      std::to_string(system_cas) + " CAs) — pass --tls-cacert to trust a private CA";
  } else {
    rc = gnutls_certificate_set_x509_trust_file(context->credentials_, cacert.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0 || (rc == 0 && cacert_given)) {
      *error = "TLS: no CA certificate could be loaded from " + cacert + " (--tls-cacert)" +
               (rc < 0 ? std::string(": ") + gnutls_strerror(rc) : std::string("")) +
               " — it must hold PEM certificates (-----BEGIN CERTIFICATE-----)";
      return nullptr;
    }
    context->cacert_ = cacert;
  }

  // Revocation: the default CRL only if readable; a given one must be.
  const std::string crl_problem = unreadable(cacrl);
  if (crl_problem.empty()) {
    rc = gnutls_certificate_set_x509_crl_file(context->credentials_, cacrl.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
      *error = "TLS: cannot load the revocation list " + cacrl + " (--tls-cacrl): " + gnutls_strerror(rc) +
               " — it must be a PEM CRL (-----BEGIN X509 CRL-----) signed by a trusted CA";
      return nullptr;
    }
    context->cacrl_ = cacrl;
  } else if (cacrl_given) {
    *error = "TLS: cannot read the revocation list " + cacrl + " (--tls-cacrl): " + crl_problem +
             " — fix the path, or leave --tls-cacrl out to check no CRL";
    return nullptr;
  }

  // Own identity: the certificate and its key.
  for (const auto& [path, flag] : {std::pair<std::string, const char*>{cert, "--tls-cert"}, {key, "--tls-key"}}) {
    const std::string problem = unreadable(path);
    if (!problem.empty()) {
      *error = "TLS: cannot read " + path + " (" + flag + "): " + problem + " — pass --tls-cert and --tls-key" +
               " (defaults " + kTlsDefaultCert + " and " + kTlsDefaultKey + ")";
      return nullptr;
    }
  }
  rc = gnutls_certificate_set_x509_key_file(context->credentials_, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
  if (rc < 0) {
    *error = "TLS: cannot use the certificate " + cert + " with the key " + key + ": " + gnutls_strerror(rc) +
             " — --tls-cert and --tls-key must be a PEM certificate and its own private key";
    return nullptr;
  }
  return context;
}

TlsContext::~TlsContext() {
  if (credentials_) gnutls_certificate_free_credentials(credentials_);
}

const char* TlsContext::expected_name() const {
  if (options_.no_cn_verify || options_.peer_name.empty()) return nullptr;
  return options_.peer_name.c_str();
}

std::string TlsContext::describe_verify_status(unsigned status) const {
  const std::string crl = cacrl_.empty() ? std::string("no CRL loaded") : "CRL " + cacrl_;
  const std::string ca = cacert_.empty() ? std::string("the system store") : cacert_;
  if (status & GNUTLS_CERT_REVOKED) {
    return "the peer's certificate is revoked (" + crl + "); give the peer a valid certificate";
  }
  if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
    return "the peer's certificate is signed by an unknown CA (trusted: " + ca +
           "); pass the CA that signed it with --tls-cacert, or give the peer a certificate from this CA";
  }
  if (status & GNUTLS_CERT_SIGNER_NOT_CA) {
    return "the peer's certificate is signed by a certificate that is not a CA (trusted: " + ca + ")";
  }
  if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
    return std::string("the peer's certificate does not name ") + (expected_name() ? expected_name() : "?") +
           " (--address); give it a certificate with that name (subjectAltName), or pass --tls-no-cn-verify";
  }
  if (status & GNUTLS_CERT_EXPIRED) return "the peer's certificate has expired";
  if (status & GNUTLS_CERT_NOT_ACTIVATED) return "the peer's certificate is not valid yet (check both clocks)";
  if (status & GNUTLS_CERT_INSECURE_ALGORITHM) return "the peer's certificate uses an insecure signature algorithm";
  if (status & GNUTLS_CERT_REVOCATION_DATA_SUPERSEDED) return "the CRL (" + crl + ") is out of date";
  gnutls_datum_t text{};
  std::string out = "the peer's certificate is refused";
  if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) == 0) {
    out += std::string(": ") + reinterpret_cast<const char*>(text.data);
    gnutls_free(text.data);
  }
  return out;
}

}  // namespace lazyd
