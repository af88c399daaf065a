#include "tools/provision.h"

#include <google/protobuf/text_format.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/transport/tls.h"
#include "common/x509.h"
#include "fl/config.pb.h"

namespace fl {
namespace {

class ProvisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/provision_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = std::filesystem::path(pattern).lexically_normal().string();
    out_ = root_ + "/kits";
    options_.out_dir = out_;
    options_.coordinator_address = "fl.example.org:7443";
    options_.sites = {"hospital-a", "hospital_b"};
    options_.admins = {"alice"};
    options_.data_root = "/data";
  }
  void TearDown() override { std::system(("rm -rf '" + root_ + "'").c_str()); }

  std::string Read(const std::string& path) {
    auto contents = ReadFileToString(path);
    EXPECT_TRUE(contents.ok()) << contents.status();
    return contents.ok() ? *contents : "";
  }
  int Mode(const std::string& path) {
    struct stat st;
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 0777;
  }
  template <typename T>
  T ParseConfig(const std::string& path) {
    T message;
    EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(Read(path), &message)) << path;
    return message;
  }

  std::string root_, out_;
  ProvisionOptions options_;
};

TEST_F(ProvisionTest, WritesKitsWithPrivateKeys) {
  auto report = Provision(options_);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->created.size(), 5u);  // ca, coordinator, two sites, one admin
  EXPECT_TRUE(report->kept.empty());
  EXPECT_EQ(Mode(out_ + "/ca/ca.key"), 0600);
  EXPECT_EQ(Mode(out_ + "/ca"), 0700);
  for (const std::string kit :
       {"/coordinator", "/sites/hospital-a", "/sites/hospital_b", "/admins/alice"}) {
    EXPECT_EQ(Mode(out_ + kit), 0700) << kit;
    EXPECT_EQ(Mode(out_ + kit + "/key.pem"), 0600) << kit;
    EXPECT_EQ(Read(out_ + kit + "/ca.pem"), Read(out_ + "/ca/ca.pem"));
  }
  auto site = IdentityFromPem(Read(out_ + "/sites/hospital-a/cert.pem"));
  ASSERT_TRUE(site.ok()) << site.status();
  EXPECT_EQ(site->name, "hospital-a");
  EXPECT_EQ(site->role, Role::kSite);
  auto admin = IdentityFromPem(Read(out_ + "/admins/alice/cert.pem"));
  ASSERT_TRUE(admin.ok());
  EXPECT_EQ(admin->role, Role::kAdmin);
  auto coordinator = IdentityFromPem(Read(out_ + "/coordinator/cert.pem"));
  ASSERT_TRUE(coordinator.ok());
  EXPECT_EQ(coordinator->name, "coordinator");
  EXPECT_EQ(coordinator->role, Role::kCoordinator);
}

TEST_F(ProvisionTest, ConfigsParseAndPointAtLoadableKits) {
  ASSERT_TRUE(Provision(options_).ok());
  auto coordinator = ParseConfig<CoordinatorConfig>(out_ + "/coordinator/coordinator.conf");
  EXPECT_EQ(coordinator.listen_address(), "0.0.0.0:7443");
  EXPECT_EQ(coordinator.state_dir(), out_ + "/coordinator/state");
  EXPECT_TRUE(LoadTlsMaterial(coordinator.tls()).ok());

  auto client = ParseConfig<ClientConfig>(out_ + "/sites/hospital-a/client.conf");
  EXPECT_EQ(client.coordinator_address(), "fl.example.org:7443");
  EXPECT_EQ(client.coordinator_name(), "coordinator");
  EXPECT_EQ(client.data_dir(), "/data/hospital-a");
  EXPECT_EQ(client.labels_csv(), "/data/hospital-a/labels.csv");
  EXPECT_EQ(client.tls().key_file(), out_ + "/sites/hospital-a/key.pem");
  EXPECT_EQ(client.device(), "auto");
  EXPECT_GT(client.budget().max_epsilon(), 0);
  auto client_material = LoadTlsMaterial(client.tls());
  ASSERT_TRUE(client_material.ok()) << client_material.status();

  auto admin = ParseConfig<AdminConfig>(out_ + "/admins/alice/admin.conf");
  EXPECT_EQ(admin.coordinator_address(), "fl.example.org:7443");
  EXPECT_TRUE(LoadTlsMaterial(admin.tls()).ok());

  // The coordinator certificate answers to the names the clients dial.
  std::string ca = Read(out_ + "/ca/ca.pem");
  EXPECT_TRUE(VerifyCertChain(ca, Read(out_ + "/coordinator/cert.pem")).ok());
}

// The kits as written talk to each other: a site dials the coordinator by the name in its
// config and both sides accept each other's certificates (grpc.health.v1.Health/Check).
TEST_F(ProvisionTest, SiteKitReachesCoordinatorKitOverMutualTls) {
  ASSERT_TRUE(Provision(options_).ok());
  auto coordinator = ParseConfig<CoordinatorConfig>(out_ + "/coordinator/coordinator.conf");
  auto client = ParseConfig<ClientConfig>(out_ + "/sites/hospital_b/client.conf");
  auto server_material = LoadTlsMaterial(coordinator.tls());
  auto client_material = LoadTlsMaterial(client.tls());
  ASSERT_TRUE(server_material.ok() && client_material.ok());

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(*server_material), &port);
  grpc::CallbackGenericService unimplemented;  // a server needs one service besides health
  builder.RegisterCallbackGenericService(&unimplemented);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_TRUE(server != nullptr && port > 0);

  auto channel =
      MakeChannel("127.0.0.1:" + std::to_string(port), client.coordinator_name(), *client_material);
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  server->Shutdown();
}

TEST_F(ProvisionTest, RerunKeepsExistingKitsAndAddsNewOnes) {
  ASSERT_TRUE(Provision(options_).ok());
  std::string ca_before = Read(out_ + "/ca/ca.pem");
  std::string site_before = Read(out_ + "/sites/hospital-a/cert.pem");
  std::string key_before = Read(out_ + "/sites/hospital-a/key.pem");
  std::string coordinator_before = Read(out_ + "/coordinator/cert.pem");

  options_.sites = {"hospital-a", "hospital-c"};
  options_.admins = {};
  auto report = Provision(options_);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->created.size(), 1u);
  EXPECT_EQ(report->created[0], out_ + "/sites/hospital-c");
  EXPECT_EQ(report->kept.size(), 3u);  // ca, coordinator, hospital-a

  EXPECT_EQ(Read(out_ + "/ca/ca.pem"), ca_before);
  EXPECT_EQ(Read(out_ + "/sites/hospital-a/cert.pem"), site_before);
  EXPECT_EQ(Read(out_ + "/sites/hospital-a/key.pem"), key_before);
  EXPECT_EQ(Read(out_ + "/coordinator/cert.pem"), coordinator_before);
  EXPECT_TRUE(VerifyCertChain(ca_before, Read(out_ + "/sites/hospital-c/cert.pem")).ok());
  EXPECT_TRUE(VerifyCertChain(ca_before, Read(out_ + "/sites/hospital_b/cert.pem")).ok());
}

TEST_F(ProvisionTest, RenewReKeysOnlyTheNamedKits) {
  ASSERT_TRUE(Provision(options_).ok());
  const std::string ca = Read(out_ + "/ca/ca.pem");
  const std::string site_cert = Read(out_ + "/sites/hospital-a/cert.pem");
  const std::string site_key = Read(out_ + "/sites/hospital-a/key.pem");
  const std::string site_conf = Read(out_ + "/sites/hospital-a/client.conf");
  const std::string coordinator = Read(out_ + "/coordinator/cert.pem");
  const std::string other = Read(out_ + "/sites/hospital_b/cert.pem");

  options_.renew = {"coordinator", "hospital-a"};
  auto report = Provision(options_);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->renewed.size(), 2u);
  EXPECT_TRUE(report->created.empty());
  EXPECT_EQ(Read(out_ + "/ca/ca.pem"), ca);
  EXPECT_EQ(Read(out_ + "/sites/hospital_b/cert.pem"), other);
  EXPECT_EQ(Read(out_ + "/sites/hospital-a/client.conf"), site_conf);
  const std::string renewed = Read(out_ + "/sites/hospital-a/cert.pem");
  EXPECT_NE(renewed, site_cert);
  EXPECT_NE(Read(out_ + "/sites/hospital-a/key.pem"), site_key);
  EXPECT_NE(Read(out_ + "/coordinator/cert.pem"), coordinator);
  EXPECT_TRUE(VerifyCertChain(ca, renewed).ok());
  EXPECT_TRUE(CheckKeyMatchesCert(Read(out_ + "/sites/hospital-a/key.pem"), renewed).ok());
  auto subject = ParseCertSubject(renewed);
  ASSERT_TRUE(subject.ok());
  EXPECT_EQ(subject->common_name, "hospital-a");

  options_.renew = {"hospital-z"};
  EXPECT_EQ(Provision(options_).status().code(), absl::StatusCode::kInvalidArgument);
}

// deploy/ installs the kits unchanged: the configs must name the units' folders.
TEST_F(ProvisionTest, InstalledLayoutNamesTheDeployPaths) {
  options_.installed = true;
  ASSERT_TRUE(Provision(options_).ok());
  auto coordinator = ParseConfig<CoordinatorConfig>(out_ + "/coordinator/coordinator.conf");
  EXPECT_EQ(coordinator.state_dir(), "/var/lib/fl-coordinator");
  EXPECT_EQ(coordinator.tls().cert_file(), "/etc/fl-coordinator/cert.pem");
  EXPECT_EQ(coordinator.tls().key_file(), "/etc/fl-coordinator/key.pem");
  EXPECT_EQ(coordinator.tls().ca_file(), "/etc/fl-coordinator/ca.pem");
  EXPECT_EQ(coordinator.metrics_address(), "0.0.0.0:9464");
  auto site = ParseConfig<ClientConfig>(out_ + "/sites/hospital-a/client.conf");
  EXPECT_EQ(site.state_dir(), "/var/lib/fl-client");
  EXPECT_EQ(site.tls().key_file(), "/etc/fl-client/key.pem");
  EXPECT_EQ(site.metrics_address(), "127.0.0.1:9465");
  EXPECT_EQ(site.data_dir(), "/data/hospital-a");
  auto admin = ParseConfig<AdminConfig>(out_ + "/admins/alice/admin.conf");
  EXPECT_EQ(admin.tls().key_file(), out_ + "/admins/alice/key.pem");
}

TEST_F(ProvisionTest, RefusesBadNamesAndAddresses) {
  std::vector<std::string> bad_names = {"Hospital", "-a", "a b", "a/b", "", std::string(64, 'a')};
  for (const std::string& bad : bad_names) {
    EXPECT_FALSE(ValidateParticipantName(bad).ok()) << bad;
  }
  EXPECT_TRUE(ValidateParticipantName("0site_x-1").ok());
  EXPECT_TRUE(ValidateParticipantName(std::string(63, 'a')).ok());

  options_.sites = {"../escape"};
  auto report = Provision(options_);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(report.status().message().find("../escape"), std::string::npos);
  options_.sites = {"a", "a"};
  EXPECT_FALSE(Provision(options_).ok());
  options_.sites = {"a"};
  options_.coordinator_address = "no-port";
  EXPECT_FALSE(Provision(options_).ok());
  options_.coordinator_address = "host:99999";
  EXPECT_FALSE(Provision(options_).ok());
  struct stat st;
  EXPECT_NE(::stat(out_.c_str(), &st), 0) << "nothing is written for invalid options";
}

TEST_F(ProvisionTest, RefusesHalfPresentCa) {
  ASSERT_TRUE(Provision(options_).ok());
  ASSERT_EQ(::unlink((out_ + "/ca/ca.key").c_str()), 0);
  options_.sites = {"hospital-new"};
  auto report = Provision(options_);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fl
