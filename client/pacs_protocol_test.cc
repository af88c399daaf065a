// The pacs source's sync against a real Orthanc over both protocols, DIMSE and DICOMweb, on the
// same PACS (Orthanc with the orthanc-dicomweb plugin: client/pacs_dicomweb_test_util.h): one
// test body, the same expectations.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "client/dicom.h"
#include "client/pacs.h"
#include "client/pacs_dicomweb_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::DicomWebTest;
using ::fl::testing::Retag;
using ::testing::HasSubstr;

enum class Protocol { kDimse, kDicomWeb };

class PacsProtocolTest : public DicomWebTest, public ::testing::WithParamInterface<Protocol> {
 protected:
  // `config` over the protocol under test.
  PacsSource Via(const PacsSource& config) const {
    return GetParam() == Protocol::kDicomWeb ? Web(config) : config;
  }
};

TEST_P(PacsProtocolTest, SyncFetchesOnlyWhatIsNew) {
  PacsSyncReport first = Sync(Via(Chest()));
  EXPECT_EQ(first.studies, 2);
  EXPECT_EQ(first.fetched, 4);
  EXPECT_EQ(first.cached, 4);
  EXPECT_EQ(CachedFiles().size(), 4u);

  PacsSyncReport second = Sync(Via(Chest()));
  EXPECT_EQ(second.fetched, 0);
  EXPECT_EQ(second.series_up_to_date, 2);

  ASSERT_TRUE(Load(3));  // a new study
  PacsSyncReport third = Sync(Via(Chest()));
  EXPECT_EQ(third.fetched, 1);
  EXPECT_EQ(third.series_up_to_date, 2);
  EXPECT_EQ(third.cached, 5);
  absl::StatusOr<DicomImage> added = ReadDicomHeader(files_[5]);
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_THAT(CachedFiles(), ::testing::Contains(PacsCache::FileName(added->sop_instance_uid)));
}

TEST_P(PacsProtocolTest, AnInstanceAddedToACachedSeriesIsFetchedAlone) {
  ASSERT_EQ(Sync(Via(Chest())).fetched, 4);
  // One more image in study B's series.
  Retag(files_[6], studies_[1], studies_[1].study_uid, studies_[1].series_uid);
  ASSERT_TRUE(orthanc_->Store({files_[6]}));
  PacsSyncReport report = Sync(Via(Chest()));
  EXPECT_EQ(report.fetched, 1);
  EXPECT_EQ(report.already_cached, 2);
  EXPECT_EQ(report.cached, 5);
}

TEST_P(PacsProtocolTest, KilledMidSyncLeavesASoundCacheAndTheNextSyncCompletes) {
  PacsSyncOptions options;
  options.on_cached = [&](int fetched) {
    if (fetched == 1) orthanc_->Kill(SIGKILL);
  };
  absl::Status status;
  PacsSyncReport report = Sync(Via(Chest()), &status, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("the next sync resumes"));
  // Over DIMSE the kill stops the C-GET at once; over DICOMweb the rest of the series' response
  // may have been on its way already, and is kept when it arrived whole.
  const int kept = report.cached;
  EXPECT_EQ(kept, 1 + (GetParam() == Protocol::kDicomWeb && kept == 2));
  EXPECT_EQ(CachedFiles().size(), static_cast<size_t>(kept));
  // What a crash of ours would leave: a partial file, a file the index does not know.
  std::ofstream(dir_ + "/cache/incoming/1.2.3.dcm.part") << "DICM half";
  std::ofstream(dir_ + "/cache/instances/1.2.3.dcm") << "not indexed";

  ASSERT_TRUE(orthanc_->Start());
  report = Sync(Via(Chest()));
  EXPECT_EQ(report.fetched, 4 - kept);
  EXPECT_EQ(report.already_cached, kept == 1 ? 1 : 0);  // a series cut short is listed
  EXPECT_EQ(report.cached, 4);
  EXPECT_EQ(report.repair.partial_files, 1);
  EXPECT_EQ(report.repair.unindexed_files, 1);
  EXPECT_EQ(CachedFiles().size(), 4u);
  EXPECT_TRUE(fs::is_empty(dir_ + "/cache/incoming"));
}

TEST_P(PacsProtocolTest, ACorruptObjectIsRejectedAndNeverCached) {
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

  PacsSyncReport report = Sync(Via(Chest()));
  EXPECT_EQ(report.fetched, 4);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.failed, 0);  // our refusal is not counted as the PACS's failure
  ASSERT_EQ(report.rejects.size(), 1u);
  EXPECT_THAT(report.rejects[0].reason, HasSubstr("pixel data too short"));
  EXPECT_THAT(DescribePacsSync(report), HasSubstr("rejected "));
  EXPECT_EQ(CachedFiles().size(), 4u);
  EXPECT_TRUE(fs::is_empty(dir_ + "/cache/incoming"));

  report = Sync(Via(Chest()));  // the refused object is known: its series is not asked for again
  EXPECT_EQ(report.fetched, 0);
  EXPECT_EQ(report.series_up_to_date, report.series);
  PacsSyncOptions retry;
  retry.retry_rejected = true;
  report = Sync(Via(Chest()), nullptr, retry);
  EXPECT_EQ(report.fetched, 0);
  EXPECT_EQ(report.already_cached, 2);
  EXPECT_EQ(report.rejected, 1);
  EXPECT_EQ(report.cached, 4);
}

TEST_P(PacsProtocolTest, AnEmptyQueryIsNoErrorButAnEmptyCacheStopsTheDaemon) {
  PacsSource config = Via(Chest());
  config.set_study_date_range("20300101-");
  PacsSyncReport report = Sync(config);
  EXPECT_EQ(report.studies, 0);
  EXPECT_EQ(report.fetched, 0);
  PacsSyncOutcome outcome;
  absl::Status status = SyncPacsAtStart(config, "pacs_protocol_test", &outcome);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(status.message()), HasSubstr("matched 0 studies"));
  EXPECT_TRUE(outcome.sync.ok());
  EXPECT_EQ(outcome.cached, 0);
  ASSERT_EQ(Sync(Via(Chest())).fetched, 4);
  EXPECT_TRUE(SyncPacsAtStart(config, "pacs_protocol_test", &outcome).ok());  // the cache has data
  EXPECT_EQ(outcome.cached, 4);
  EXPECT_EQ(outcome.report.studies, 0);
}

TEST_P(PacsProtocolTest, LimitsHoldAcrossSeveralConnections) {
  PacsSource config = Via(Config());  // all three studies: 5 instances in 3 series
  config.set_max_associations(2);
  config.set_max_instances_per_minute(600);  // one each 100 ms, whichever association
  config.set_pause_ms(20);
  const auto start = std::chrono::steady_clock::now();
  PacsSyncReport report = Sync(config);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(report.fetched, 5);
  EXPECT_EQ(report.cached, 5);
  EXPECT_GE(elapsed, std::chrono::milliseconds(400));
}

// A pace slower than the timeout: the wait for the next instance is ours, not a stalled PACS.
TEST_P(PacsProtocolTest, APaceSlowerThanTheTimeoutIsNoTimeout) {
  PacsSource config = Via(Chest());
  config.set_timeout_seconds(1);
  if (config.has_dicomweb()) config.mutable_dicomweb()->set_timeout_seconds(1);
  config.set_max_instances_per_minute(20);  // one each 3 s
  config.clear_modalities();
  config.add_modalities("DX");  // study B: one series of 2 instances
  PacsSyncReport report = Sync(config);
  EXPECT_EQ(report.fetched, 2);
}

INSTANTIATE_TEST_SUITE_P(Protocols, PacsProtocolTest,
                         ::testing::Values(Protocol::kDimse, Protocol::kDicomWeb),
                         [](const ::testing::TestParamInfo<Protocol>& info) {
                           return info.param == Protocol::kDimse ? "Dimse" : "DicomWeb";
                         });

}  // namespace
}  // namespace fl
