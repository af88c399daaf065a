// The pacs source's limits, cache repair, `flctl data sync` and DICOM TLS, against a real
// Orthanc (client/pacs_test_util.h).
#include <filesystem>
#include <fstream>

#include "client/pacs.h"
#include "client/pacs_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/data_check.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::Orthanc;
using ::fl::testing::PacsTest;
using ::fl::testing::WriteTestPki;
using ::testing::HasSubstr;

TEST_F(PacsTest, ASecondSyncAtOnceIsRefused) {
  absl::StatusOr<std::unique_ptr<PacsCache>> held = PacsCache::Open(dir_ + "/cache");
  ASSERT_TRUE(held.ok()) << held.status();
  absl::Status status;
  Sync(Chest(), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("being synced by another process"));
}

TEST_F(PacsTest, AChangedCacheFileIsFetchedAgain) {
  ASSERT_EQ(Sync(Chest()).fetched, 4);
  std::vector<std::string> files = CachedFiles();
  ASSERT_EQ(files.size(), 4u);
  const std::string instances = PacsCache::InstancesDir(dir_ + "/cache") + "/";
  fs::resize_file(instances + files[0], 200);  // truncated: found by its size
  {
    std::fstream flipped(instances + files[1], std::ios::in | std::ios::out | std::ios::binary);
    flipped.seekp(-1, std::ios::end);
    flipped.put('\x7f');  // same size: found only by its SHA-256
  }
  PacsSyncReport report = Sync(Chest());
  EXPECT_EQ(report.repair.stale_rows, 1);
  EXPECT_EQ(report.fetched, 1);
  PacsSyncOptions verify;
  verify.verify = true;
  report = Sync(Chest(), nullptr, verify);
  EXPECT_EQ(report.repair.stale_rows, 1);
  EXPECT_EQ(report.fetched, 1);
  EXPECT_EQ(report.cached, 4);
}

TEST_F(PacsTest, FlctlDataSyncPrintsWhatItDid) {
  DataSourceConfig source;
  *source.mutable_pacs() = Chest();
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(SyncDataSource(source, false, false), 0);
  std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(out, HasSubstr("fetched: 4 instances"));
  EXPECT_THAT(out, HasSubstr("cache: " + dir_ + "/cache"));
  orthanc_->Kill(SIGTERM);
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(SyncDataSource(source, false, false), 1);
  out = ::testing::internal::GetCapturedStdout();
  EXPECT_THAT(out, HasSubstr("in the cache: 4"));
  DataSourceConfig folder;
  folder.mutable_dicom_folder()->set_dir(dir_);
  EXPECT_EQ(SyncDataSource(folder, false, false), 2);
}

// Orthanc with DICOM TLS, our certificate required; certificates from the project's own CA code.
class PacsTlsTest : public PacsTest {
 protected:
  std::unique_ptr<Orthanc> MakeOrthanc() override {
    const std::string tls = dir_ + "/tls";
    EXPECT_TRUE(WriteTestPki(tls));
    const std::string extra = absl::StrCat(
        R"("DicomTlsEnabled": true, "DicomTlsCertificate": ")", tls, R"(/pacs.pem",)",
        R"( "DicomTlsPrivateKey": ")", tls, R"(/pacs.key", "DicomTlsTrustedCertificates": ")", tls,
        R"(/ca.pem", "DicomTlsRemoteCertificateRequired": true, )");
    const std::string loader =
        absl::StrCat("+tls ", tls, "/ours.key ", tls, "/ours.pem -pw +cf ", tls, "/ca.pem");
    return std::make_unique<Orthanc>(dir_ + "/orthanc", port_, extra, loader);
  }

  PacsSource Tls() const {
    PacsSource config = Chest();
    config.mutable_tls()->set_ca_file(dir_ + "/tls/ca.pem");
    config.mutable_tls()->set_cert_file(dir_ + "/tls/ours.pem");
    config.mutable_tls()->set_key_file(dir_ + "/tls/ours.key");
    return config;
  }
};

TEST_F(PacsTlsTest, SyncsOverTlsAndPlainTcpIsRefused) {
  PacsSyncReport report = Sync(Tls());
  EXPECT_EQ(report.fetched, 4);
  absl::Status status;
  Sync(Chest(), &status);  // no TLS
  EXPECT_FALSE(status.ok());
  PacsSource missing = Tls();
  missing.mutable_tls()->set_ca_file(dir_ + "/tls/none.pem");
  Sync(missing, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("none.pem"));
}

}  // namespace
}  // namespace fl
