// flctl cert fingerprint CERT.pem: the SHA-256 fingerprint that revocation lists name.
#include <iostream>
#include <memory>

#include "common/file_util.h"
#include "common/x509.h"
#include "tools/cli.h"

namespace fl::cli {
namespace {

CommandRun SetUpCert(CLI::App& app) {
  auto cert = std::make_shared<std::string>();
  app.require_subcommand(1);
  CLI::App* fingerprint = app.add_subcommand(
      "fingerprint", "print a certificate's SHA-256 fingerprint, as revoked_certificates names it");
  fingerprint->add_option("CERT", *cert, "the certificate, PEM")->required();
  return [cert] {
    absl::StatusOr<std::string> pem = ReadFileToString(*cert);
    if (!pem.ok()) return Fail(pem.status(), 2);
    absl::StatusOr<CertSubject> subject = ParseCertSubject(*pem);
    if (!subject.ok()) return Fail(subject.status());
    std::cout << subject->fingerprint << "\n";
    return 0;
  };
}

FL_COMMAND("cert", "certificate tools: fingerprint (for revoked_certificates)", SetUpCert);

}  // namespace
}  // namespace fl::cli
