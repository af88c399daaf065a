// The pacs source against a real PACS: Debian's Orthanc, started by each test on loopback with
// its own config and storage, loaded with phantom studies through DCMTK's storescu.
// The sync over both protocols: client/pacs_protocol_test.cc.
#include "client/pacs.h"

#include <signal.h>

#include "client/dicom.h"
#include "client/pacs_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/data_check.h"

namespace fl {
namespace {

using ::fl::testing::PacsTest;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

TEST_F(PacsTest, QueryFiltersPickTheRightStudies) {
  EXPECT_THAT(Accessions(Config()), UnorderedElementsAre("ACC1", "ACC2", "ACC3"));
  EXPECT_THAT(Accessions(Chest()), UnorderedElementsAre("ACC1", "ACC2"));
  PacsSource config = Config();
  config.add_modalities("MR");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC3"));
  config = Config();
  config.set_study_date_range("20240201-20241231");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC2"));
  config.set_study_date_range("-20231231");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC3"));
  config = Config();
  config.set_study_description("*PORTABLE*");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC2"));
  config = Config();
  config.set_body_part("KNEE");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC3"));
  config = Config();
  config.add_accession_numbers("ACC1");
  config.add_accession_numbers("ACC3");
  EXPECT_THAT(Accessions(config), UnorderedElementsAre("ACC1", "ACC3"));
}

TEST_F(PacsTest, AWrongCalledAeTitleIsRefusedWithThePacsReason) {
  PacsSource config = Chest();
  config.set_called_ae_title("NOTTHEPACS");
  PacsSyncReport report;
  const absl::Status status = SyncPacs(config, {}, &report);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("rejected the association"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("Called AE Title Not Recognized"));
  EXPECT_EQ(report.cached, 0);
}

TEST_F(PacsTest, APacsThatIsDownIsUnavailableAndTheDaemonGoesOnWithTheCache) {
  PacsSource config = Chest();
  // Nothing cached yet: the daemon cannot start.
  orthanc_->Kill(SIGTERM);
  absl::Status status = SyncPacsAtStart(config, "pacs_test");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot open an association with PACS"));
  ASSERT_TRUE(orthanc_->Start());
  ASSERT_EQ(Sync(config).fetched, 4);
  orthanc_->Kill(SIGTERM);
  Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_TRUE(SyncPacsAtStart(config, "pacs_test").ok());
}

TEST_F(PacsTest, ListAndLoadReadTheCacheWithTheLabelsCsv) {
  DataSourceConfig source;
  *source.mutable_pacs() = Chest();
  absl::StatusOr<std::unique_ptr<DataSource>> opened = OpenDataSource(source);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_THAT(std::string((*opened)->List(0.0).status().message()), HasSubstr("sync it first"));
  ASSERT_EQ(Sync(Chest()).fetched, 4);
  orthanc_->Kill(SIGTERM);  // rounds never ask the PACS
  absl::StatusOr<Dataset> data = (*opened)->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ((*opened)->Kind(), "pacs");
  ASSERT_EQ(data->train.size(), 4u);
  EXPECT_EQ(data->unlabelled_files, 0);
  EXPECT_EQ(data->skipped_files, 0);
  EXPECT_FALSE(data->label_names.empty());
  for (const Sample& sample : data->train) {
    EXPECT_FALSE(sample.sop_instance_uid.empty());
    EXPECT_EQ(sample.labels.size(), data->label_names.size());
    absl::StatusOr<std::vector<float>> pixels = (*opened)->Load(sample, PixelShape::Square(32));
    ASSERT_TRUE(pixels.ok()) << pixels.status();
    EXPECT_EQ(pixels->size(), 32u * 32u);
  }
  EXPECT_EQ(CheckDataSource(source, false), 0);  // flctl data check
}

TEST(PacsConfigTest, BadOptionsAreRefusedNamingTheField) {
  PacsSource config;
  config.set_host("pacs.example");
  config.set_port(104);
  config.set_called_ae_title("PACS");
  config.set_calling_ae_title("FL");
  config.set_cache_dir("/tmp/cache");
  EXPECT_TRUE(ValidatePacsSource(config).ok());
  PacsSource bad = config;
  bad.set_called_ae_title("A_TITLE_LONGER_THAN_16");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("called_ae_title"));
  bad = config;
  bad.set_study_date_range("2024-01-01");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("study_date_range"));
  bad.set_study_date_range("20240101-");
  EXPECT_TRUE(ValidatePacsSource(bad).ok());
  bad = config;
  bad.set_cache_dir("");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("cache_dir"));
  bad = config;
  bad.add_modalities("CR\\DX");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("modalities"));
  bad = config;
  bad.mutable_tls()->set_cert_file("/x.pem");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("tls.ca_file"));
}

TEST(PacsConfigTest, ClientConfigPutsTheCacheUnderStateDir) {
  ClientConfig client;
  client.set_state_dir("/var/lib/fl");
  client.mutable_source()->mutable_pacs()->set_host("pacs");
  EXPECT_EQ(SourceOf(client).pacs().cache_dir(), "/var/lib/fl/pacs");
  client.mutable_source()->mutable_pacs()->set_cache_dir("/srv/cache");
  EXPECT_EQ(SourceOf(client).pacs().cache_dir(), "/srv/cache");
}

}  // namespace
}  // namespace fl
