#include "common/transport/tls.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/fault_env.h"
#include "common/file_util.h"
#include "common/transport/tls_watch.h"
#include "common/x509.h"

namespace fl {
namespace {

constexpr char kWhoAmI[] = "/fl.test.Echo/WhoAmI";

// A consortium for the tests: one CA, a coordinator (server) and a site (client).
struct Consortium {
  KeyAndCert ca, coordinator, site, admin;
};

CertRequest Request(const std::string& name, const std::string& role) {
  CertRequest request;
  request.common_name = name;
  request.organizational_unit = role;
  request.valid_days = 2;
  if (role == "coordinator") {
    request.dns_names = {"coordinator", "localhost"};
    request.ip_addresses = {"127.0.0.1"};
  }
  return request;
}

Consortium MakeConsortium() {
  Consortium c;
  c.ca = CreateCa("test ca", 2).value();
  c.coordinator = IssueCert(c.ca, Request("coordinator", "coordinator")).value();
  c.site = IssueCert(c.ca, Request("hospital-a", "site")).value();
  c.admin = IssueCert(c.ca, Request("alice", "admin")).value();
  return c;
}

TlsMaterial Material(const KeyAndCert& ca, const KeyAndCert& own) {
  return TlsMaterial{ca.cert_pem, own.cert_pem, own.key_pem};
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/tls_test.XXXXXX";
    path_ = mkdtemp(pattern.data());
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Writes a kit (ca.pem, cert.pem, key.pem with mode `key_mode`) and returns its TlsConfig.
TlsConfig WriteKit(const std::string& dir, const KeyAndCert& ca, const KeyAndCert& own,
                   mode_t key_mode = 0600) {
  TlsConfig config;
  config.set_ca_file(dir + "/ca.pem");
  config.set_cert_file(dir + "/cert.pem");
  config.set_key_file(dir + "/key.pem");
  EXPECT_TRUE(WriteFileAtomic(config.ca_file(), ca.cert_pem, 0644).ok());
  EXPECT_TRUE(WriteFileAtomic(config.cert_file(), own.cert_pem, 0644).ok());
  EXPECT_TRUE(WriteFileAtomic(config.key_file(), own.key_pem, key_mode).ok());
  return config;
}

TEST(LoadTlsMaterialTest, LoadsAGoodKit) {
  Consortium c = MakeConsortium();
  TempDir dir;
  auto material = LoadTlsMaterial(WriteKit(dir.path(), c.ca, c.site));
  ASSERT_TRUE(material.ok()) << material.status();
  EXPECT_EQ(material->ca_pem, c.ca.cert_pem);
  EXPECT_EQ(material->cert_pem, c.site.cert_pem);
  EXPECT_EQ(material->key_pem, c.site.key_pem);
}

TEST(LoadTlsMaterialTest, MissingFileIsNamed) {
  Consortium c = MakeConsortium();
  TempDir dir;
  TlsConfig config = WriteKit(dir.path(), c.ca, c.site);
  config.set_cert_file(dir.path() + "/nope.pem");
  absl::Status status = LoadTlsMaterial(config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(status.message().find(dir.path() + "/nope.pem"), std::string::npos) << status;
  config.clear_ca_file();
  status = LoadTlsMaterial(config).status();
  EXPECT_NE(status.message().find("tls.ca_file"), std::string::npos) << status;
}

TEST(LoadTlsMaterialTest, RefusesKeyReadableByOthers) {
  Consortium c = MakeConsortium();
  TempDir dir;
  TlsConfig config = WriteKit(dir.path(), c.ca, c.site, 0644);
  absl::Status status = LoadTlsMaterial(config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find(config.key_file()), std::string::npos) << status;
  EXPECT_NE(status.message().find("chmod 600"), std::string::npos) << status;
  ASSERT_EQ(chmod(config.key_file().c_str(), 0640), 0);
  EXPECT_EQ(LoadTlsMaterial(config).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(LoadTlsMaterialTest, RefusesMismatchedKeyAndForeignCert) {
  Consortium c = MakeConsortium();
  TempDir dir;
  TlsConfig config = WriteKit(dir.path(), c.ca, KeyAndCert{c.admin.key_pem, c.site.cert_pem});
  absl::Status status = LoadTlsMaterial(config).status();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("does not match"), std::string::npos) << status;

  Consortium other = MakeConsortium();
  config = WriteKit(dir.path(), c.ca, other.site);
  status = LoadTlsMaterial(config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;

  ASSERT_TRUE(WriteFileAtomic(config.cert_file(), "not a certificate", 0644).ok());
  status = LoadTlsMaterial(config).status();
  EXPECT_NE(status.message().find(config.cert_file()), std::string::npos) << status;
}

TEST(IdentityFromPemTest, ReadsNameAndRole) {
  Consortium c = MakeConsortium();
  auto site = IdentityFromPem(c.site.cert_pem);
  ASSERT_TRUE(site.ok()) << site.status();
  EXPECT_EQ(site->name, "hospital-a");
  EXPECT_EQ(site->role, Role::kSite);
  auto admin = IdentityFromPem(c.admin.cert_pem);
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(admin->role, Role::kAdmin);
  auto coordinator = IdentityFromPem(c.coordinator.cert_pem);
  ASSERT_TRUE(coordinator.ok());
  EXPECT_EQ(coordinator->role, Role::kCoordinator);
  EXPECT_STREQ(RoleName(Role::kSite), "site");
}

TEST(IdentityFromPemTest, RefusesUnknownRoleAndGarbage) {
  Consortium c = MakeConsortium();
  auto rogue = IssueCert(c.ca, Request("mallory", "superuser"));
  ASSERT_TRUE(rogue.ok());
  EXPECT_EQ(IdentityFromPem(rogue->cert_pem).status().code(), absl::StatusCode::kPermissionDenied);
  auto no_ou = IssueCert(c.ca, Request("nobody", ""));
  ASSERT_TRUE(no_ou.ok());
  EXPECT_EQ(IdentityFromPem(no_ou->cert_pem).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(IdentityFromPem("junk").status().code(), absl::StatusCode::kInvalidArgument);
}

// A mutual-TLS server on 127.0.0.1:0 with the standard health service and a generic handler
// that answers every call with the caller's identity as PeerIdentity sees it ("name/role").
class TestServer {
 public:
  explicit TestServer(const TlsMaterial& material) : TestServer(FixedCertificates(material)) {}
  explicit TestServer(CertificateProvider provider) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(std::move(provider)), &port_);
    builder.RegisterAsyncGenericService(&service_);
    cq_ = builder.AddCompletionQueue();
    server_ = builder.BuildAndStart();
    thread_ = std::thread([this] { Serve(); });
  }
  ~TestServer() {
    {
      // RequestCall after Shutdown trips an assertion inside gRPC, so the serving thread asks
      // for a call only while holding this lock and before the flag is set.
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    cq_->Shutdown();
    thread_.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool started() const { return server_ != nullptr && port_ > 0; }

 private:
  // One call at a time: accept, read the request, answer, finish.
  void Serve() {
    void* tag;
    bool ok = true;
    while (ok) {
      grpc::GenericServerContext context;
      grpc::GenericServerAsyncReaderWriter stream(&context);
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) break;
        service_.RequestCall(&context, &stream, cq_.get(), cq_.get(), this);
      }
      if (!cq_->Next(&tag, &ok) || !ok) break;
      grpc::ByteBuffer request;
      stream.Read(&request, this);
      if (!cq_->Next(&tag, &ok)) break;
      absl::StatusOr<Identity> identity = PeerIdentity(context);
      std::string reply = identity.ok() ? identity->name + "/" + RoleName(identity->role)
                                        : "error: " + std::string(identity.status().message());
      grpc::Slice slice(reply);
      stream.WriteAndFinish(grpc::ByteBuffer(&slice, 1), grpc::WriteOptions(), grpc::Status::OK,
                            this);
      if (!cq_->Next(&tag, &ok)) break;
      ok = true;
    }
    while (cq_->Next(&tag, &ok)) {
    }
  }

  int port_ = 0;
  std::mutex mu_;
  bool stopping_ = false;
  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::unique_ptr<grpc::Server> server_;
  std::thread thread_;
};

// Calls `method` with an empty request; the reply bytes or the gRPC error.
absl::StatusOr<std::string> Call(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& method) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(std::move(status)); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
  }
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("cannot read the response");
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

class MutualTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = MakeConsortium();
    server_ = std::make_unique<TestServer>(Material(c_.ca, c_.coordinator));
    ASSERT_TRUE(server_->started());
  }
  std::shared_ptr<grpc::Channel> Channel(const TlsMaterial& material,
                                         const std::string& name = "coordinator") {
    return MakeChannel(server_->address(), name, material);
  }

  Consortium c_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(MutualTlsTest, HealthCheckOverMutualTls) {
  auto reply = Call(Channel(Material(c_.ca, c_.site)), "/grpc.health.v1.Health/Check");
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, std::string("\x08\x01", 2));  // HealthCheckResponse{status: SERVING}
}

TEST_F(MutualTlsTest, HandlerSeesClientIdentity) {
  auto site = Call(Channel(Material(c_.ca, c_.site)), kWhoAmI);
  ASSERT_TRUE(site.ok()) << site.status();
  EXPECT_EQ(*site, "hospital-a/site");
  auto admin = Call(Channel(Material(c_.ca, c_.admin), "localhost"), kWhoAmI);
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_EQ(*admin, "alice/admin");
}

TEST_F(MutualTlsTest, ClientRefusesWrongServerName) {
  EXPECT_FALSE(Call(Channel(Material(c_.ca, c_.site), "evil.example"), kWhoAmI).ok());
}

TEST_F(MutualTlsTest, RefusesClientFromAnotherCa) {
  Consortium other = MakeConsortium();
  // The stranger trusts our CA (so it accepts the server) but its own cert is foreign.
  EXPECT_FALSE(Call(Channel(Material(c_.ca, other.site)), kWhoAmI).ok());
}

TEST_F(MutualTlsTest, RefusesPlaintextClient) {
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  EXPECT_FALSE(Call(channel, kWhoAmI).ok());
}

TEST_F(MutualTlsTest, RefusesClientWithoutCertificate) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = c_.ca.cert_pem;
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("coordinator");
  auto channel = grpc::CreateCustomChannel(server_->address(), grpc::SslCredentials(options), args);
  EXPECT_FALSE(Call(channel, kWhoAmI).ok());
}

TEST_F(MutualTlsTest, RefusesExpiredClientCertificate) {
  CertRequest request = Request("hospital-old", "site");
  request.valid_days = 1;
  request.not_before_offset_seconds = -3 * 86400;
  auto expired = IssueCert(c_.ca, request);
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_FALSE(Call(Channel(Material(c_.ca, *expired)), kWhoAmI).ok());
  // The same client with a valid certificate gets in.
  EXPECT_TRUE(Call(Channel(Material(c_.ca, c_.site)), kWhoAmI).ok());
}

// Calls WhoAmI on a fresh channel until it answers as `expect` ("" = until it is refused), for
// at most 10 s: gRPC's file watcher picks up a rotation within reload_seconds.
bool EventuallyAnswers(const std::string& address, const CertificateProvider& provider,
                       const std::string& expect) {
  for (int i = 0; i < 100; ++i) {
    absl::StatusOr<std::string> reply =
        Call(MakeChannel(address, "coordinator", provider), kWhoAmI);
    if (expect.empty() ? !reply.ok() : (reply.ok() && *reply == expect)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::string Bundle(const KeyAndCert& a, const KeyAndCert& b) { return a.cert_pem + b.cert_pem; }

// A kit of `own` signed by `ca`, watched every `reload_seconds` (the watcher writes its copies
// through `env`); `reloads` collects what the watcher reported.
struct WatchedKit {
  WatchedKit(const KeyAndCert& ca, const KeyAndCert& own, int reload_seconds = 1,
             Env* env = Env::Default()) {
    config = WriteKit(kit.path(), ca, own);
    config.set_reload_seconds(reload_seconds);
    auto started = TlsWatcher::Start(
        config, active.path() + "/tls", [this](const absl::Status& s) { reloads.push_back(s); },
        env);
    EXPECT_TRUE(started.ok()) << started.status();
    if (started.ok()) watcher = *std::move(started);
  }
  TempDir kit, active;
  TlsConfig config;
  std::vector<absl::Status> reloads;
  std::unique_ptr<TlsWatcher> watcher;  // last: stopped before what its callback uses
};

TEST(TlsWatcherTest, ServerPicksUpRotatedCaAndCertificateWithoutRestart) {
  Consortium c = MakeConsortium(), next = MakeConsortium();
  WatchedKit w(c.ca, c.coordinator);
  ASSERT_NE(w.watcher, nullptr);
  TestServer server(w.watcher->provider());
  const CertificateProvider old_site = FixedCertificates(Material(c.ca, c.site));
  // A site of the next consortium CA, trusting both CAs.
  TlsMaterial next_site = Material(next.ca, next.site);
  next_site.ca_pem = Bundle(c.ca, next.ca);
  ASSERT_TRUE(EventuallyAnswers(server.address(), old_site, "hospital-a/site"));
  EXPECT_TRUE(EventuallyAnswers(server.address(), FixedCertificates(next_site), ""));

  // Phase 1 of a CA rollover: the coordinator trusts both CAs, keeps its old certificate.
  ASSERT_TRUE(WriteFileAtomic(w.config.ca_file(), Bundle(c.ca, next.ca), 0644).ok());
  EXPECT_EQ(w.watcher->CheckNow().value_or(false), true);
  EXPECT_TRUE(EventuallyAnswers(server.address(), FixedCertificates(next_site), "hospital-a/site"));
  EXPECT_TRUE(EventuallyAnswers(server.address(), old_site, "hospital-a/site"));

  // Phase 2: a certificate from the new CA. A client that trusts only the new CA gets in, so
  // the server presents the new certificate.
  ASSERT_TRUE(WriteFileAtomic(w.config.key_file(), next.coordinator.key_pem, 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(w.config.cert_file(), next.coordinator.cert_pem, 0644).ok());
  EXPECT_EQ(w.watcher->CheckNow().value_or(false), true);
  EXPECT_TRUE(EventuallyAnswers(server.address(), FixedCertificates(Material(next.ca, next.site)),
                                "hospital-a/site"));
  EXPECT_EQ(w.watcher->current().cert_pem, next.coordinator.cert_pem);
  ASSERT_EQ(w.reloads.size(), 2u);
  EXPECT_TRUE(w.reloads[0].ok() && w.reloads[1].ok());
  EXPECT_EQ(w.watcher->CheckNow().value_or(true), false);  // unchanged files: nothing to do
}

TEST(TlsWatcherTest, RefusedRotationKeepsTheLastGoodSet) {
  Consortium c = MakeConsortium(), other = MakeConsortium();
  WatchedKit w(c.ca, c.coordinator);
  ASSERT_NE(w.watcher, nullptr);
  TestServer server(w.watcher->provider());
  const CertificateProvider site = FixedCertificates(Material(c.ca, c.site));

  // A world-readable key, then a certificate that does not match the key: both refused.
  ASSERT_TRUE(WriteFileAtomic(w.config.key_file(), c.coordinator.key_pem, 0644).ok());
  EXPECT_EQ(w.watcher->CheckNow().value_or(true), false);  // not settled yet
  absl::StatusOr<bool> checked = w.watcher->CheckNow();
  ASSERT_FALSE(checked.ok());
  EXPECT_NE(checked.status().message().find("chmod 600"), std::string::npos) << checked.status();
  ASSERT_EQ(chmod(w.config.key_file().c_str(), 0600), 0);
  ASSERT_TRUE(WriteFileAtomic(w.config.cert_file(), other.coordinator.cert_pem, 0644).ok());
  EXPECT_TRUE(w.watcher->CheckNow().ok());
  EXPECT_FALSE(w.watcher->CheckNow().ok());
  ASSERT_EQ(w.reloads.size(), 2u);
  EXPECT_FALSE(w.reloads[1].ok());
  // gRPC's file watcher serves what current/ holds; it still holds the last good set, so
  // there is nothing for the watcher to pick up (no need to sleep through its polls).
  EXPECT_EQ(ReadFileToString(w.active.path() + "/tls/current/cert.pem").value_or(""),
            c.coordinator.cert_pem);
  EXPECT_EQ(ReadFileToString(w.active.path() + "/tls/current/key.pem").value_or(""),
            c.coordinator.key_pem);
  EXPECT_TRUE(EventuallyAnswers(server.address(), site, "hospital-a/site"));
  EXPECT_EQ(w.watcher->current().cert_pem, c.coordinator.cert_pem);
}

// A good rotation that cannot be written (the disk is full) is refused with the disk's code, the
// last good set stays live, and the next check, with room again, makes it live: files that
// did not change are tried again when only writing them failed.
TEST(TlsWatcherTest, ARotationThatCannotBeWrittenIsTriedAgain) {
  Consortium c = MakeConsortium(), next = MakeConsortium();
  FaultEnv env;
  WatchedKit w(c.ca, c.coordinator, /*reload_seconds=*/3600, &env);  // checks by hand only
  ASSERT_NE(w.watcher, nullptr);
  const std::string live = w.active.path() + "/tls/current/ca.pem";
  ASSERT_TRUE(WriteFileAtomic(w.config.ca_file(), Bundle(c.ca, next.ca), 0644).ok());
  env.Inject({.op = FileOp::kWrite, .error = ENOSPC, .path_part = "/tls/"});
  absl::StatusOr<bool> checked = w.watcher->CheckNow();
  EXPECT_EQ(checked.status().code(), absl::StatusCode::kResourceExhausted) << checked.status();
  EXPECT_EQ(ReadFileToString(live).value_or(""), c.ca.cert_pem);
  EXPECT_EQ(w.watcher->current().ca_pem, c.ca.cert_pem);
  EXPECT_EQ(w.watcher->CheckNow().value_or(false), true);
  EXPECT_EQ(ReadFileToString(live).value_or(""), Bundle(c.ca, next.ca));
  ASSERT_EQ(w.reloads.size(), 2u);
  EXPECT_FALSE(w.reloads[0].ok());
  EXPECT_TRUE(w.reloads[1].ok());
}

TEST(TlsWatcherTest, ClientPresentsItsRotatedCertificate) {
  Consortium c = MakeConsortium();
  TestServer server(Material(c.ca, c.coordinator));
  WatchedKit w(c.ca, c.site);
  ASSERT_NE(w.watcher, nullptr);
  ASSERT_TRUE(EventuallyAnswers(server.address(), w.watcher->provider(), "hospital-a/site"));
  // The site's certificate is renewed under a new name; new connections present it.
  KeyAndCert renewed = IssueCert(c.ca, Request("hospital-a2", "site")).value();
  ASSERT_TRUE(WriteFileAtomic(w.config.key_file(), renewed.key_pem, 0600).ok());
  ASSERT_TRUE(WriteFileAtomic(w.config.cert_file(), renewed.cert_pem, 0644).ok());
  EXPECT_TRUE(EventuallyAnswers(server.address(), w.watcher->provider(), "hospital-a2/site"));
}

TEST(TlsWatcherTest, StartRefusesABadKit) {
  Consortium c = MakeConsortium();
  TempDir kit, active;
  TlsConfig config = WriteKit(kit.path(), c.ca, c.site, 0644);
  auto watcher = TlsWatcher::Start(config, active.path() + "/tls", nullptr);
  EXPECT_EQ(watcher.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fl
