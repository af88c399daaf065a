// The gRPC side of the site core: a CoordinatorConnection over one mutual-TLS channel. Only
// converts messages and statuses; the rules live in client/daemon.h.
#pragma once

#include <memory>
#include <string>

#include "client/coordinator_link.h"
#include "common/transport/tls.h"

namespace fl {

// Dials `address` (the coordinator's certificate must name `coordinator_name`) with the
// certificates `tls` provides at the time of each dial.
Connector GrpcConnector(std::string address, std::string coordinator_name, CertificateProvider tls);

}  // namespace fl
