#include "common/identity.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/x509.h"

namespace fl {
namespace {

absl::StatusOr<Role> RoleFromName(const std::string& ou) {
  for (Role role : {Role::kCoordinator, Role::kSite, Role::kAdmin}) {
    if (ou == RoleName(role)) return role;
  }
  return absl::PermissionDeniedError(absl::StrCat(
      "certificate OU '", ou, "' is not a role of the consortium (coordinator, site, admin)"));
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kCoordinator:
      return "coordinator";
    case Role::kSite:
      return "site";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

absl::StatusOr<Identity> IdentityFromPem(const std::string& cert_pem) {
  ASSIGN_OR_RETURN(CertSubject subject, ParseCertSubject(cert_pem));
  if (subject.common_name.empty()) {
    return absl::PermissionDeniedError("certificate subject has no CN");
  }
  Identity identity;
  identity.name = subject.common_name;
  identity.fingerprint = subject.fingerprint;
  ASSIGN_OR_RETURN(identity.role, RoleFromName(subject.organizational_unit));
  return identity;
}

}  // namespace fl
