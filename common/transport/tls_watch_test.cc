// The daemons' certificate-expiry gauges from the live TLS set.
#include <sys/stat.h>
#include <time.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "common/test_dir.h"
#include "common/transport/tls_watch.h"
#include "common/x509.h"

namespace fl {
namespace {

void WriteFile(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream(path) << text;
  chmod(path.c_str(), mode);
}

TEST(TlsWatcherTest, CertificateExpiryExported) {
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  CertRequest request;
  request.common_name = "site-a";
  request.organizational_unit = "site";
  request.valid_days = 2;
  auto leaf = IssueCert(*ca, request);
  ASSERT_TRUE(leaf.ok());
  const std::string dir = FreshTestDir();
  WriteFile(dir + "/ca.pem", ca->cert_pem);
  WriteFile(dir + "/cert.pem", leaf->cert_pem);
  WriteFile(dir + "/key.pem", leaf->key_pem, 0600);
  TlsConfig tls;
  tls.set_ca_file(dir + "/ca.pem");
  tls.set_cert_file(dir + "/cert.pem");
  tls.set_key_file(dir + "/key.pem");
  tls.set_reload_seconds(3600);
  auto watcher = TlsWatcher::Start(tls, dir + "/active", nullptr);
  ASSERT_TRUE(watcher.ok()) << watcher.status();
  prometheus::Registry registry;
  auto& expiry = prometheus::BuildGauge().Name("expiry").Help("h").Register(registry);
  ExportCertificateExpiry(**watcher, &expiry);
  const double now = static_cast<double>(time(nullptr));
  EXPECT_NEAR(expiry.Add({{"file", "cert"}}).Value(), now + 2 * 86400, 120);
  EXPECT_NEAR(expiry.Add({{"file", "ca"}}).Value(), now + 10 * 86400, 120);
}

}  // namespace
}  // namespace fl
