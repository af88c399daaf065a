#include "common/transport/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "common/x509.h"

namespace fl {
namespace {

constexpr int kMaxMessageBytes = 16 << 20;

// Reads the file named by the TlsConfig field `field`; errors name the field and the file.
absl::StatusOr<std::string> ReadTlsFile(const std::string& field, const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("tls.", field, " is not set"));
  auto contents = ReadFileToString(path);
  if (!contents.ok()) return Annotate(contents.status(), absl::StrCat("tls.", field));
  if (contents->empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tls.", field, ": ", path, " is empty"));
  }
  return contents;
}

}  // namespace

absl::StatusOr<TlsMaterial> LoadTlsMaterial(const TlsConfig& config) {
  TlsMaterial m;
  ASSIGN_OR_RETURN(m.ca_pem, ReadTlsFile("ca_file", config.ca_file()));
  ASSIGN_OR_RETURN(m.cert_pem, ReadTlsFile("cert_file", config.cert_file()));
  ASSIGN_OR_RETURN(m.key_pem, ReadTlsFile("key_file", config.key_file()));
  // The key is the participant's identity: refused when others may read it.
  RETURN_IF_ERROR(CheckOwnerOnly("tls.key_file", config.key_file()));
  RETURN_IF_ERROR(Annotate(ParseCertSubject(m.ca_pem).status(),
                           absl::StrCat("tls.ca_file ", config.ca_file())));
  RETURN_IF_ERROR(Annotate(ParseCertSubject(m.cert_pem).status(),
                           absl::StrCat("tls.cert_file ", config.cert_file())));
  RETURN_IF_ERROR(
      Annotate(CheckPrivateKeyPem(m.key_pem), absl::StrCat("tls.key_file ", config.key_file())));
  RETURN_IF_ERROR(Annotate(
      CheckKeyMatchesCert(m.key_pem, m.cert_pem),
      absl::StrCat("tls.key_file ", config.key_file(), " and tls.cert_file ", config.cert_file())));
  // Failing here (expired, or signed by another CA) beats an opaque handshake failure later.
  RETURN_IF_ERROR(Annotate(
      VerifyCertChain(m.ca_pem, m.cert_pem),
      absl::StrCat("tls.cert_file ", config.cert_file(), " with tls.ca_file ", config.ca_file())));
  return m;
}

CertificateProvider FixedCertificates(const TlsMaterial& material) {
  return std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
      material.ca_pem,
      std::vector<grpc::experimental::IdentityKeyCertPair>{{material.key_pem, material.cert_pem}});
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(CertificateProvider provider) {
  grpc::experimental::TlsServerCredentialsOptions options(std::move(provider));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsMaterial& material) {
  return MakeServerCredentials(FixedCertificates(material));
}

namespace {

// HTTP/2 flow control for bulk tensor streams. BDP probing is off: it keeps resizing windows
// mid-stream, which measured 2-3x slower on loopback than fixed windows. A receiver's window
// bounds what a peer may push before it is read: clients take downloads with a wide window; the
// coordinator grants its (admitted) upload streams a narrow one, which keeps its receive buffers
// small and measured no slower on loopback than 2 MiB.
constexpr int kClientWindowBytes = 8 << 20;
constexpr int kServerWindowBytes = 256 << 10;
constexpr int kFrameBytes = 1 << 20;

template <typename Args>
void SetBulkTransferArgs(Args& args, int window_bytes) {
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, window_bytes);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kFrameBytes);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, window_bytes);
}

struct BuilderArgs {
  grpc::ServerBuilder* builder;
  void SetInt(const char* key, int value) { builder->AddChannelArgument(key, value); }
};

}  // namespace

void ConfigureServerBuilder(grpc::ServerBuilder& builder) {
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  BuilderArgs args{&builder};
  SetBulkTransferArgs(args, kServerWindowBytes);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& server_name,
                                           const TlsMaterial& material) {
  return MakeChannel(address, server_name, FixedCertificates(material));
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           const std::string& server_name,
                                           CertificateProvider provider) {
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(std::move(provider));
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(server_name);
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Keepalive pings find dead connections through NATs and firewalls that drop idle flows.
  // The server must accept them (see GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  SetBulkTransferArgs(args, kClientWindowBytes);
  return grpc::CreateCustomChannel(address, grpc::experimental::TlsCredentials(options), args);
}

absl::StatusOr<Identity> PeerIdentity(const grpc::ServerContext& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("the peer presented no verified certificate");
  }
  std::vector<grpc::string_ref> pems = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pems.empty()) {
    return absl::UnauthenticatedError("the peer's certificate is missing from the auth context");
  }
  return IdentityFromPem(std::string(pems.front().data(), pems.front().size()));
}

}  // namespace fl
