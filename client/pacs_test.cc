// The pacs source against a real PACS: Debian's Orthanc, started by each test on loopback with
// its own config and storage, loaded with phantom studies through DCMTK's storescu.
#include "client/pacs.h"

#include <signal.h>

#include <filesystem>
#include <fstream>

#include "client/dicom.h"
#include "client/pacs_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/data_check.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::PacsTest;
using ::fl::testing::Retag;
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

TEST_F(PacsTest, SyncFetchesOnlyWhatIsNew) {
  PacsSyncReport first = Sync(Chest());
  EXPECT_EQ(first.studies, 2);
  EXPECT_EQ(first.fetched, 4);
  EXPECT_EQ(first.cached, 4);
  EXPECT_EQ(CachedFiles().size(), 4u);

  PacsSyncReport second = Sync(Chest());
  EXPECT_EQ(second.fetched, 0);
  EXPECT_EQ(second.series_up_to_date, 2);

  ASSERT_TRUE(Load(3));  // a new study
  PacsSyncReport third = Sync(Chest());
  EXPECT_EQ(third.fetched, 1);
  EXPECT_EQ(third.series_up_to_date, 2);
  EXPECT_EQ(third.cached, 5);
  absl::StatusOr<DicomImage> added = ReadDicomHeader(files_[5]);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_THAT(CachedFiles(), ::testing::Contains(PacsCache::FileName(added->sop_instance_uid)));
}

TEST_F(PacsTest, AnInstanceAddedToACachedSeriesIsFetchedAlone) {
  ASSERT_EQ(Sync(Chest()).fetched, 4);
  // One more image in study B's series.
  Retag(files_[6], studies_[1], studies_[1].study_uid, studies_[1].series_uid);
  ASSERT_TRUE(orthanc_->Store({files_[6]}));
  PacsSyncReport report = Sync(Chest());
  EXPECT_EQ(report.fetched, 1);
  EXPECT_EQ(report.already_cached, 2);
  EXPECT_EQ(report.cached, 5);
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

TEST_F(PacsTest, KilledMidSyncLeavesASoundCacheAndTheNextSyncCompletes) {
  PacsSyncOptions options;
  options.on_cached = [&](int fetched) {
    if (fetched == 1) orthanc_->Kill(SIGKILL);
  };
  absl::Status status;
  PacsSyncReport report = Sync(Chest(), &status, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("the next sync resumes"));
  EXPECT_EQ(report.cached, 1);
  EXPECT_EQ(CachedFiles().size(), 1u);
  // What a crash of ours would leave: a partial file, a file the index does not know.
  std::ofstream(dir_ + "/cache/incoming/1.2.3.dcm.part") << "DICM half";
  std::ofstream(dir_ + "/cache/instances/1.2.3.dcm") << "not indexed";

  ASSERT_TRUE(orthanc_->Start());
  report = Sync(Chest());
  EXPECT_EQ(report.fetched, 3);
  EXPECT_EQ(report.already_cached, 1);
  EXPECT_EQ(report.cached, 4);
  EXPECT_EQ(report.repair.partial_files, 1);
  EXPECT_EQ(report.repair.unindexed_files, 1);
  EXPECT_EQ(CachedFiles().size(), 4u);
  EXPECT_TRUE(fs::is_empty(dir_ + "/cache/incoming"));
}

TEST_F(PacsTest, ACorruptObjectIsRejectedAndNeverCached) {
  // In study B's series, pixel data far shorter than 64 x 64 x 16 bits: DCMTK parses it (and
  // so does Orthanc), but it does not decode.
  Retag(files_[7], studies_[1], studies_[1].study_uid, studies_[1].series_uid);
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(files_[7].c_str()).good());
  const Uint16 few[8] = {};
  ASSERT_TRUE(file.getDataset()->putAndInsertUint16Array(DCM_PixelData, few, 8).good());
  const std::string corrupt = dir_ + "/corrupt.dcm";
  ASSERT_TRUE(file.saveFile(corrupt.c_str(), EXS_LittleEndianExplicit).good());
  ASSERT_TRUE(orthanc_->Store({corrupt}));

  PacsSyncReport report = Sync(Chest());
  EXPECT_EQ(report.fetched, 4);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.failed, 0);  // our refusal is not counted as the PACS's failure
  ASSERT_EQ(report.rejects.size(), 1u);
  EXPECT_THAT(report.rejects[0].reason, HasSubstr("pixel data too short"));
  EXPECT_THAT(DescribePacsSync(report), HasSubstr("rejected "));
  EXPECT_EQ(CachedFiles().size(), 4u);
  EXPECT_TRUE(fs::is_empty(dir_ + "/cache/incoming"));

  report = Sync(Chest());  // the refused object is known: its series is not asked for again
  EXPECT_EQ(report.fetched, 0);
  EXPECT_EQ(report.series_up_to_date, report.series);
  PacsSyncOptions retry;
  retry.retry_rejected = true;
  report = Sync(Chest(), nullptr, retry);
  EXPECT_EQ(report.fetched, 0);
  EXPECT_EQ(report.already_cached, 2);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.cached, 4);
}

TEST_F(PacsTest, AnEmptyQueryIsNoErrorButAnEmptyCacheStopsTheDaemon) {
  PacsSource config = Chest();
  config.set_study_date_range("20300101-");
  PacsSyncReport report = Sync(config);
  EXPECT_EQ(report.studies, 0);
  EXPECT_EQ(report.fetched, 0);
  absl::Status status = SyncPacsAtStart(config, "pacs_test");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("matched 0 studies"));
  ASSERT_EQ(Sync(Chest()).fetched, 4);
  EXPECT_TRUE(SyncPacsAtStart(config, "pacs_test").ok());  // the cache has data
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
