#include "common/monitoring.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>

#include "absl/strings/str_cat.h"
#include "common/daemon_util.h"
#include "common/test_dir.h"
#include "common/x509.h"

namespace fl {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// A raw HTTP/1.0 GET on loopback (no client library between the test and the server).
struct Reply {
  int code = 0;
  std::string head;
  std::string body;
};
Reply Get(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  Reply reply;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return reply;
  }
  const std::string request = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: localhost\r\n\r\n");
  EXPECT_EQ(write(fd, request.data(), request.size()), static_cast<ssize_t>(request.size()));
  std::string raw;
  char buffer[4096];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof(buffer))) > 0) raw.append(buffer, n);
  close(fd);
  const size_t split = raw.find("\r\n\r\n");
  if (raw.size() < 12 || split == std::string::npos) return reply;
  reply.code = std::stoi(raw.substr(9, 3));
  reply.head = raw.substr(0, split);
  reply.body = raw.substr(split + 4);
  return reply;
}

std::unique_ptr<MonitoringServer> StartOnFreePort(std::shared_ptr<prometheus::Registry> registry) {
  absl::StatusOr<std::unique_ptr<MonitoringServer>> server =
      MonitoringServer::Start("127.0.0.1:0", std::move(registry));
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return nullptr;
  EXPECT_EQ((*server)->ports().size(), 1u);
  return *std::move(server);
}

TEST(MonitoringServerTest, ServesMetricsAfterTheScrapeHooks) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& requests =
      prometheus::BuildCounter().Name("fl_test_requests_total").Help("h").Register(*registry);
  requests.Add({{"result", "ok"}}).Increment(3);
  auto& mirrored = prometheus::BuildGauge().Name("fl_test_mirrored").Help("h").Register(*registry);
  std::unique_ptr<MonitoringServer> server = StartOnFreePort(registry);
  ASSERT_NE(server, nullptr);
  std::atomic<int> scrapes{0};
  server->AddScrapeHook([&] { mirrored.Add({}).Set(++scrapes); });
  Reply first = Get(server->ports()[0], "/metrics");
  EXPECT_EQ(first.code, 200);
  EXPECT_THAT(first.head, HasSubstr("text/plain; version=0.0.4"));
  EXPECT_THAT(first.body, HasSubstr("# TYPE fl_test_requests_total counter"));
  EXPECT_THAT(first.body, HasSubstr("fl_test_requests_total{result=\"ok\"} 3"));
  EXPECT_THAT(first.body, HasSubstr("fl_test_mirrored 1"));
  EXPECT_THAT(Get(server->ports()[0], "/metrics").body, HasSubstr("fl_test_mirrored 2"));
}

TEST(MonitoringServerTest, LiveAlwaysReadyOnlyWhenEveryCheckPasses) {
  std::unique_ptr<MonitoringServer> server =
      StartOnFreePort(std::make_shared<prometheus::Registry>());
  ASSERT_NE(server, nullptr);
  const int port = server->ports()[0];
  Reply live = Get(port, "/healthz");
  EXPECT_EQ(live.code, 200);
  EXPECT_EQ(live.body, "ok\n");
  // Nothing registered yet: the daemon is still starting.
  Reply starting = Get(port, "/readyz");
  EXPECT_EQ(starting.code, 503);
  EXPECT_EQ(starting.body, "starting\n");

  std::atomic<bool> disk_ok{true};
  server->AddReadinessCheck("state", [] { return absl::OkStatus(); });
  server->AddReadinessCheck("disk", [&] {
    return disk_ok ? absl::OkStatus() : absl::UnavailableError("state_dir /x: Read-only");
  });
  Reply ready = Get(port, "/readyz");
  EXPECT_EQ(ready.code, 200);
  EXPECT_EQ(ready.body, "ready\n");
  disk_ok = false;
  Reply not_ready = Get(port, "/readyz");
  EXPECT_EQ(not_ready.code, 503);
  EXPECT_EQ(not_ready.body, "disk: state_dir /x: Read-only\n");
  EXPECT_EQ(Get(port, "/healthz").code, 200);  // not ready is not dead
  disk_ok = true;
  EXPECT_EQ(Get(port, "/readyz").code, 200);
}

// Regression: a check reading a file (ReadFileToString: a 64 KiB buffer on the stack) crashed
// both daemons with SIGSEGV on civetweb's small worker stacks.
TEST(MonitoringServerTest, ChecksAndHooksMayUseADeepStack) {
  std::unique_ptr<MonitoringServer> server =
      StartOnFreePort(std::make_shared<prometheus::Registry>());
  ASSERT_NE(server, nullptr);
  auto deep = [] {
    volatile char buffer[1 << 20];  // 1 MiB: more than any civetweb worker has
    buffer[0] = 1;
    buffer[sizeof(buffer) - 1] = 1;
    return buffer[0] + buffer[sizeof(buffer) - 1];
  };
  server->AddReadinessCheck(
      "deep", [deep] { return deep() == 2 ? absl::OkStatus() : absl::InternalError("?"); });
  server->AddScrapeHook([deep] { deep(); });
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(Get(server->ports()[0], "/readyz").code, 200);
    EXPECT_EQ(Get(server->ports()[0], "/metrics").code, 200);
  }
}

TEST(MonitoringServerTest, OtherPathsAreNotFound) {
  std::unique_ptr<MonitoringServer> server =
      StartOnFreePort(std::make_shared<prometheus::Registry>());
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(Get(server->ports()[0], "/").code, 404);
  EXPECT_EQ(Get(server->ports()[0], "/healthz/extra").code, 404);
  EXPECT_EQ(Get(server->ports()[0], "/metricsx").code, 404);
}

TEST(MonitoringServerTest, BusyAddressIsUnavailable) {
  std::unique_ptr<MonitoringServer> first =
      StartOnFreePort(std::make_shared<prometheus::Registry>());
  ASSERT_NE(first, nullptr);
  const std::string busy = absl::StrCat("127.0.0.1:", first->ports()[0]);
  absl::StatusOr<std::unique_ptr<MonitoringServer>> second =
      MonitoringServer::Start(busy, std::make_shared<prometheus::Registry>());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(busy));
}

void WriteFile(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream(path) << text;
  chmod(path.c_str(), mode);
}

// The live TLS files as TlsWatcher publishes them: STATE_DIR/tls/current/{ca,cert,key}.pem.
std::string LiveTls(const KeyAndCert& ca, const KeyAndCert& leaf) {
  const std::string state_dir = FreshTestDir();
  const std::string live = state_dir + "/tls/current";
  std::filesystem::create_directories(live);
  WriteFile(live + "/ca.pem", ca.cert_pem);
  WriteFile(live + "/cert.pem", leaf.cert_pem);
  WriteFile(live + "/key.pem", leaf.key_pem, 0600);
  return state_dir;
}

TEST(DaemonReadinessTest, TlsReadyOnlyWhileTheLiveCertificateIsValid) {
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  CertRequest request;
  request.common_name = "coordinator";
  request.organizational_unit = "coordinator";
  auto valid = IssueCert(*ca, request);
  request.valid_days = 1;
  request.not_before_offset_seconds = -3 * 86400;
  auto expired = IssueCert(*ca, request);
  ASSERT_TRUE(valid.ok() && expired.ok());

  const std::string good = LiveTls(*ca, *valid);
  EXPECT_TRUE(LiveTlsReadiness(good)().ok());
  std::filesystem::remove(good + "/tls/current/key.pem");
  absl::Status no_key = LiveTlsReadiness(good)();
  EXPECT_FALSE(no_key.ok());
  EXPECT_THAT(std::string(no_key.message()), HasSubstr("key.pem"));

  absl::Status stale = LiveTlsReadiness(LiveTls(*ca, *expired))();
  EXPECT_EQ(stale.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(stale.message()), HasSubstr("expired"));
  auto other_ca = CreateCa("other", 10);
  ASSERT_TRUE(other_ca.ok());
  EXPECT_FALSE(LiveTlsReadiness(LiveTls(*other_ca, *valid))().ok());
}

TEST(DaemonReadinessTest, FolderAccess) {
  const std::string dir = FreshTestDir();
  EXPECT_TRUE(CheckFolderAccess("data_dir", dir, R_OK | X_OK).ok());
  absl::Status missing = CheckFolderAccess("data_dir", dir + "/gone", R_OK);
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(missing.message()), StartsWith("data_dir " + dir + "/gone: "));
  WriteFile(dir + "/file", "x");
  EXPECT_THAT(std::string(CheckFolderAccess("data_dir", dir + "/file", R_OK).message()),
              HasSubstr("not a folder"));
  if (geteuid() != 0) {  // root reads whatever the mode says
    chmod(dir.c_str(), 0);
    EXPECT_FALSE(CheckFolderAccess("data_dir", dir, R_OK).ok());
    chmod(dir.c_str(), 0700);
  }
}

}  // namespace
}  // namespace fl
