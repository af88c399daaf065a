// The pacs source over DICOMweb with HTTPS and a client certificate, certificates from the
// project's CA code (common/x509.h). Orthanc 1.10.1 as Debian 12 ships it crashes on its first
// HTTPS connection (SIGSEGV in libcivetweb.so.1: a null function pointer, with SslEnabled
// alone), so HTTPS is nginx in front of Orthanc's loopback HTTP port, as Orthanc's book
// recommends for production: nginx checks our certificate, Orthanc checks the token.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "client/pacs.h"
#include "client/pacs_dicomweb_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::Accepts;
using ::fl::testing::DicomWebTest;
using ::fl::testing::FreePort;
using ::fl::testing::WriteTestPki;
using ::testing::HasSubstr;

constexpr char kNginx[] = "/usr/sbin/nginx";

// nginx (Debian's nginx-light) terminating HTTPS on loopback at `port`, our certificate
// required, passing requests (streamed, unbuffered) to `upstream`.
class Nginx {
 public:
  Nginx(const std::string& dir, int port, int upstream) : dir_(dir), port_(port) {
    fs::create_directories(dir + "/tmp");
    std::ofstream(dir + "/nginx.conf") << absl::StrCat(
        "daemon off; master_process off; pid ", dir, "/nginx.pid;\n",
        "events { worker_connections 64; }\n", "http {\n  access_log off;\n",
        "  client_body_temp_path ", dir, "/tmp; proxy_temp_path ", dir, "/tmp;\n",
        "  fastcgi_temp_path ", dir, "/tmp; uwsgi_temp_path ", dir, "/tmp; scgi_temp_path ", dir,
        "/tmp;\n  server {\n    listen 127.0.0.1:", port, " ssl;\n", "    ssl_certificate ", dir,
        "/pacs.pem; ssl_certificate_key ", dir, "/pacs.key;\n", "    ssl_client_certificate ", dir,
        "/ca.pem; ssl_verify_client on;\n",
        "    location / { proxy_pass http://127.0.0.1:", upstream,
        "; proxy_buffering off; proxy_http_version 1.1; }\n  }\n}\n");
  }
  ~Nginx() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }

  ::testing::AssertionResult Start() {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const std::string log = dir_ + "/nginx.log", conf = dir_ + "/nginx.conf";
      freopen(log.c_str(), "a", stderr);
      ::execl(kNginx, kNginx, "-p", dir_.c_str(), "-e", log.c_str(), "-c", conf.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      if (Accepts(port_)) return ::testing::AssertionSuccess();
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::ifstream log(dir_ + "/nginx.log");
    return ::testing::AssertionFailure() << "nginx did not start on port " << port_ << ":\n"
                                         << std::string(std::istreambuf_iterator<char>(log), {});
  }

 private:
  const std::string dir_;
  const int port_;
  pid_t pid_ = -1;
};

class DicomWebTlsTest : public DicomWebTest {
 protected:
  void SetUp() override {
    ASSERT_EQ(::access(kNginx, X_OK), 0)
        << kNginx << " is missing: run scripts/deps.sh, which installs Debian's nginx-light";
    DicomWebTest::SetUp();
    const std::string tls = dir_ + "/tls";
    ASSERT_TRUE(WriteTestPki(tls));
    do {
      https_port_ = FreePort();
    } while (https_port_ == http_port_ || https_port_ == port_);
    nginx_ = std::make_unique<Nginx>(tls, https_port_, http_port_);
    ASSERT_TRUE(nginx_->Start());
  }

  PacsSource Tls() const {
    PacsSource config = Web(Chest());
    TlsConfig* tls = config.mutable_dicomweb()->mutable_tls();
    tls->set_ca_file(dir_ + "/tls/ca.pem");
    tls->set_cert_file(dir_ + "/tls/ours.pem");
    tls->set_key_file(dir_ + "/tls/ours.key");
    return config;
  }

  std::unique_ptr<Nginx> nginx_;
};

TEST_F(DicomWebTlsTest, SyncsOverHttpsWithOurCertificate) {
  PacsSyncReport report = Sync(Tls());
  EXPECT_EQ(report.fetched, 4);
  EXPECT_EQ(Sync(Tls()).fetched, 0);
  PacsSource wrong = Tls();  // the token still counts behind HTTPS
  WritePrivate(dir_ + "/wrong", "not-the-token");
  wrong.mutable_dicomweb()->set_bearer_token_file(dir_ + "/wrong");
  absl::Status status;
  Sync(wrong, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
}

TEST_F(DicomWebTlsTest, AServerOurCaDidNotSignIsRefusedClearly) {
  PacsSource config = Tls();
  config.mutable_dicomweb()->mutable_tls()->set_ca_file(dir_ + "/tls/other-ca.pem");
  absl::Status status;
  PacsSyncReport report = Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot verify the certificate"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("source.pacs.dicomweb.tls.ca_file"));
  EXPECT_EQ(report.cached, 0);
}

TEST_F(DicomWebTlsTest, WithoutOurCertificateOrWithAKeyOthersReadItFails) {
  PacsSource config = Tls();
  config.mutable_dicomweb()->mutable_tls()->clear_cert_file();
  config.mutable_dicomweb()->mutable_tls()->clear_key_file();
  absl::Status status;
  Sync(config, &status);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.code(), absl::StatusCode::kPermissionDenied) << status;  // no token problem

  fs::permissions(dir_ + "/tls/ours.key", fs::perms::others_read, fs::perm_options::add);
  Sync(Tls(), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("source.pacs.dicomweb.tls.key_file"));

  config = Tls();
  config.mutable_dicomweb()->mutable_tls()->set_ca_file(dir_ + "/tls/missing.pem");
  Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("missing.pem"));
}

}  // namespace
}  // namespace fl
