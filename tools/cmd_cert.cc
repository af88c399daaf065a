// flctl cert fingerprint CERT.pem: the SHA-256 fingerprint that revocation lists name.
#include <iostream>

#include "common/file_util.h"
#include "common/x509.h"
#include "tools/cli.h"

namespace fl::cli {
namespace {

constexpr char kCertUsage[] = "usage: flctl cert fingerprint CERT.pem";

int RunCert(const std::vector<std::string>& argv) {
  if (argv.size() != 2 || argv[0] != "fingerprint") {
    return Fail(absl::InvalidArgumentError(kCertUsage), 2);
  }
  absl::StatusOr<std::string> pem = ReadFileToString(argv[1]);
  if (!pem.ok()) return Fail(pem.status(), 2);
  absl::StatusOr<CertSubject> subject = ParseCertSubject(*pem);
  if (!subject.ok()) return Fail(subject.status());
  std::cout << subject->fingerprint << "\n";
  return 0;
}

FL_COMMAND("cert", "certificate tools: fingerprint (for revoked_certificates)", kCertUsage,
           RunCert);

}  // namespace
}  // namespace fl::cli
