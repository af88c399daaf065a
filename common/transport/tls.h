// Mutual TLS for every connection, and identities taken from peer certificates (a
// certificate's subject CN is the participant's name and its OU its role; common/identity.h).
// Part of the transport: one of the files that hold gRPC (docs/ARCHITECTURE.md).
#pragma once

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>

#include "absl/status/statusor.h"
#include "common/identity.h"
#include "fl/config.pb.h"

namespace fl {

// The PEM contents of a TlsConfig, read and checked: every file readable (the error names the
// file), the key not readable by group or others, the certificate parses and matches the key.
struct TlsMaterial {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
};
absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsConfig& config);

// Where a TLS handshake takes its CA and key pair from: fixed material, or a TlsWatcher that
// follows rotated files (common/tls_watch.h).
using CertificateProvider = std::shared_ptr<grpc::experimental::CertificateProviderInterface>;
CertificateProvider FixedCertificates(const TlsMaterial& material);

// Server credentials that require and verify a client certificate signed by the CA.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(CertificateProvider provider);
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsMaterial& material);

// Channel to `address` presenting our certificate and verifying the server's against the CA;
// `server_name` is the name the server certificate must carry (SAN or CN).
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& server_name,
                                           CertificateProvider provider);
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& server_name,
                                           const TlsMaterial& material);

// Transport settings of every server of the project: accepts the clients' keepalive pings,
// bounds message sizes (tensors travel in chunks) and opens HTTP/2 flow-control windows wide
// enough for bulk tensor streams.
void ConfigureServerBuilder(grpc::ServerBuilder& builder);

// Write options for the chunk messages of an upload: a buffer hint, so gRPC flushes when its
// write buffer fills, not after every chunk (measured by fl-bench transfer); the trailer, written
// without it, flushes the rest. Not for server streams: gRPC 1.51 stalled hinted server writes
// of chunks no larger than the server's write buffer.
inline grpc::WriteOptions ChunkWriteOptions() { return grpc::WriteOptions().set_buffer_hint(); }

// Identity of the authenticated peer of a call, from its verified certificate.
absl::StatusOr<Identity> PeerIdentity(const grpc::ServerContext& context);

}  // namespace fl
