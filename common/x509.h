// X.509 certificates for the consortium: a CA and the certificates it issues to the coordinator,
// the sites and the admins (ECDSA P-256 keys, SHA-256 signatures). PEM strings in and out; no
// OpenSSL type crosses this header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fl {

// What a certificate says about its holder.
struct CertRequest {
  std::string common_name;             // the participant's name (site name, "coordinator", ...)
  std::string organizational_unit;     // its role: "coordinator", "site" or "admin"; may be empty
  std::vector<std::string> dns_names;  // subjectAltName DNS entries (server certificates)
  std::vector<std::string> ip_addresses;  // subjectAltName IP entries, IPv4 or IPv6 text
  int valid_days = 825;
  bool is_ca = false;
  // Start of the validity window relative to now. Negative values with a short `valid_days`
  // produce already-expired certificates (for tests); positive ones not-yet-valid ones.
  int64_t not_before_offset_seconds = 0;
};

struct KeyAndCert {
  std::string key_pem;   // PKCS#8 private key, unencrypted
  std::string cert_pem;  // the certificate
};

// A fresh self-signed CA named `name` (subject CN), valid for `valid_days`.
absl::StatusOr<KeyAndCert> CreateCa(const std::string& name, int valid_days);

// A fresh key and a certificate for it signed by `ca`. Leaf certificates (is_ca false) carry
// keyUsage digitalSignature+keyAgreement and extendedKeyUsage serverAuth+clientAuth, so one
// certificate serves both ends of a mutual-TLS connection. Every certificate gets a random
// 128-bit serial, subject and authority key identifiers and, when names are given, a
// subjectAltName. Fails if `ca`'s key does not match its certificate or an IP does not parse.
absl::StatusOr<KeyAndCert> IssueCert(const KeyAndCert& ca, const CertRequest& request);

// Subject fields of a certificate (empty strings for absent fields).
struct CertSubject {
  std::string common_name;
  std::string organizational_unit;
  std::string fingerprint;  // SHA-256 of the DER certificate, lowercase hex (revocation lists)
};
// InvalidArgument if `cert_pem` is not a PEM certificate.
absl::StatusOr<CertSubject> ParseCertSubject(const std::string& cert_pem);

// InvalidArgument unless `key_pem` is a PEM private key.
absl::Status CheckPrivateKeyPem(const std::string& key_pem);

// InvalidArgument if either does not parse or the key is not the certificate's.
absl::Status CheckKeyMatchesCert(const std::string& key_pem, const std::string& cert_pem);

// OK if `cert_pem` chains to one of the certificates in `ca_pem` (a PEM bundle) and is valid now;
// otherwise FailedPrecondition with OpenSSL's reason ("certificate has expired", ...).
absl::Status VerifyCertChain(const std::string& ca_pem, const std::string& cert_pem);

// The earliest notAfter (Unix seconds) over every certificate in `pem` (a certificate or a CA
// bundle): when the first of them expires. InvalidArgument if it holds no PEM certificate.
absl::StatusOr<int64_t> EarliestNotAfter(const std::string& pem);

}  // namespace fl
