// Test certificates made by the openssl command line: a CA, leaf certificates for 127.0.0.1 ("good",
// "revoked"), and a CRL revoking the second; and a TlsContext for one of them as lazyd would load it.
// Used by tls_test.cc and relay_test.cc.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "net/tls_context.h"

namespace test_pki {

inline std::string& dir() {
  static std::string d;
  return d;
}

inline void sh(const std::string& command) {
  const std::string full = "cd " + dir() + " && (" + command + ") >/dev/null 2>&1";
  if (std::system(full.c_str()) != 0) {
    std::fprintf(stderr, "failed: %s\n", command.c_str());
    std::exit(1);
  }
}

inline void make() {
  char tmpl[] = "/tmp/lazyd-pki-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    std::perror("mkdtemp");
    std::exit(1);
  }
  dir() = tmpl;
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  sh("openssl req -x509 " + ec + " -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=ca"
     " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
  sh("printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > leaf.ext");
  int serial = 1;
  for (const char* name : {"good", "revoked"}) {
    const std::string n = name;
    sh("openssl req " + ec + " -keyout " + n + "-key.pem -out " + n + ".csr -subj /CN=" + n);
    sh("openssl x509 -req -in " + n + ".csr -CA ca.pem -CAkey ca-key.pem -set_serial " + std::to_string(serial++) +
       " -days 2 -out " + n + ".pem -extfile leaf.ext");
  }
  sh("touch index.txt && echo 01 > crlnumber && printf '[ca]\\ndefault_ca=c\\n[c]\\ndatabase=index.txt\\n"
     "crlnumber=crlnumber\\ncertificate=ca.pem\\nprivate_key=ca-key.pem\\ndefault_md=sha256\\ndefault_crl_days=2\\n' > ca.cnf");
  sh("openssl ca -config ca.cnf -revoke revoked.pem && openssl ca -config ca.cnf -gencrl -out crl.pem");
}

inline void remove() {
  if (!dir().empty()) std::system(("rm -rf " + dir()).c_str());
}

inline std::shared_ptr<lazyd::TlsContext> context(const std::string& who) {
  lazyd::TlsOptions o;
  o.cacert = dir() + "/ca.pem";
  o.cacrl = dir() + "/crl.pem";
  o.cert = dir() + "/" + who + ".pem";
  o.key = dir() + "/" + who + "-key.pem";
  o.peer_name = "127.0.0.1";
  std::string error;
  auto context = lazyd::TlsContext::create(o, &error);
  if (!context) {
    std::fprintf(stderr, "test pki: %s\n", error.c_str());
    std::exit(1);
  }
  return context;
}

}  // namespace test_pki
