// Who a participant is: the name and role its certificate states. gRPC-free, so that the
// coordinator core can take an Identity without seeing the transport; the transport
// (common/transport/tls.h, PeerIdentity) fills it in from the verified peer certificate.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace fl {

enum class Role { kCoordinator, kSite, kAdmin };

// "coordinator", "site", "admin": the OU written by `flctl provision`.
const char* RoleName(Role role);

struct Identity {
  std::string name;  // certificate subject CN
  Role role = Role::kSite;
  std::string fingerprint;  // SHA-256 of the certificate (hex), for revocation
};

// Identity written in a PEM certificate (CN and OU of its subject); PERMISSION_DENIED when the
// subject has no CN or its OU is not a role.
absl::StatusOr<Identity> IdentityFromPem(const std::string& cert_pem);

}  // namespace fl
