// The pacs source against a real PACS: Debian's Orthanc, started by each test on loopback with
// its own config and storage, loaded with phantom studies through DCMTK's storescu.
#include "client/pacs.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/dicom.h"
#include "common/test_dir.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/data_check.h"
#include "tools/dicom_write.h"
#include "tools/phantom.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr char kPacsAe[] = "FLTESTPACS";
constexpr char kOurAe[] = "FLCLIENT";

std::string OrthancBinary() {
  for (const char* path : {"/usr/sbin/Orthanc", "/usr/bin/Orthanc"}) {
    if (::access(path, X_OK) == 0) return path;
  }
  return "";
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool Accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

// One Orthanc process: DICOM on loopback at `port`, no HTTP server, called AE title checked,
// our AE title known and allowed C-FIND and C-GET; anyone may C-STORE (the loader).
class Orthanc {
 public:
  Orthanc(const std::string& dir, int port) : dir_(dir), port_(port) {
    fs::create_directories(dir + "/storage");
    std::ofstream(dir + "/orthanc.json")
        << absl::StrCat(R"({"Name": "fl-test", "StorageDirectory": ")", dir, R"(/storage",
  "IndexDirectory": ")",
                        dir, R"(/storage", "Plugins": [], "HttpServerEnabled": false,
  "RemoteAccessAllowed": false, "DicomAet": ")",
                        kPacsAe, R"(", "DicomPort": )", port, R"(,
  "DicomCheckCalledAet": true, "DicomAlwaysAllowStore": true, "DicomAlwaysAllowEcho": true,
  "DicomModalities": {"fl": {"AET": ")",
                        kOurAe, R"(", "Host": "127.0.0.1", "Port": 104,
    "AllowFind": true, "AllowGet": true, "AllowMove": false, "AllowStore": true}}})");
  }
  ~Orthanc() { Kill(SIGKILL); }

  // Starts it and waits until its DICOM port accepts connections.
  ::testing::AssertionResult Start() {
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string log = dir_ + "/orthanc.log";
      freopen(log.c_str(), "a", stdout);
      freopen(log.c_str(), "a", stderr);
      const std::string binary = OrthancBinary(), config = dir_ + "/orthanc.json";
      ::execl(binary.c_str(), binary.c_str(), config.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 300; ++i) {
      if (Accepts(port_)) return ::testing::AssertionSuccess();
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::ifstream log(dir_ + "/orthanc.log");
    return ::testing::AssertionFailure() << "Orthanc did not start on port " << port_ << ":\n"
                                         << std::string(std::istreambuf_iterator<char>(log), {});
  }

  void Kill(int signal) {
    if (pid_ <= 0) return;
    ::kill(pid_, signal);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // Sends `files` with storescu (DCMTK's command line tool).
  ::testing::AssertionResult Store(const std::vector<std::string>& files) {
    const std::string command =
        absl::StrCat("storescu -aec ", kPacsAe, " -aet LOADER 127.0.0.1 ", port_, " ",
                     absl::StrJoin(files, " "), " >>", dir_, "/storescu.log 2>&1");
    if (std::system(command.c_str()) == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "failed: " << command;
  }

 private:
  const std::string dir_;
  const int port_;
  pid_t pid_ = -1;
};

// A study of phantom images: one series of `modality`.
struct StudySpec {
  std::string modality, sop_class, date, description, accession, body_part;
  std::vector<int> images;            // indices into the phantom files
  std::string study_uid, series_uid;  // given at SetUp
};

// Rewrites the study, series, patient and acquisition attributes of a phantom file.
void Retag(const std::string& path, const StudySpec& spec, const std::string& study_uid,
           const std::string& series_uid) {
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(path.c_str()).good()) << path;
  file.loadAllDataIntoMemory();  // the pixel data is read lazily, from the file we overwrite
  file.getMetaInfo()->clear();   // rewritten from the dataset on save
  ASSERT_TRUE(PutAll(file.getDataset(), {{DCM_SOPClassUID, spec.sop_class},
                                         {DCM_StudyInstanceUID, study_uid},
                                         {DCM_SeriesInstanceUID, series_uid},
                                         {DCM_Modality, spec.modality},
                                         {DCM_StudyDate, spec.date},
                                         {DCM_StudyDescription, spec.description},
                                         {DCM_AccessionNumber, spec.accession},
                                         {DCM_BodyPartExamined, spec.body_part},
                                         {DCM_PatientID, "P" + spec.accession},
                                         {DCM_PatientName, "Phantom^" + spec.accession}})
                  .ok());
  ASSERT_TRUE(file.saveFile(path.c_str(), EXS_LittleEndianExplicit).good()) << path;
}

class PacsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(OrthancBinary().empty())
        << "Orthanc is not installed (/usr/sbin/Orthanc): run scripts/deps.sh, which installs "
           "Debian's orthanc package that these tests run as a real PACS";
    dir_ = FreshTestDir();
    PhantomOptions phantom;
    phantom.count = 8;
    phantom.size = 64;
    ASSERT_TRUE(WritePhantomDataset(phantom, dir_ + "/phantom").ok());
    for (const auto& entry : fs::directory_iterator(dir_ + "/phantom")) {
      if (entry.path().extension() == ".dcm") files_.push_back(entry.path().string());
    }
    std::sort(files_.begin(), files_.end());
    ASSERT_GE(files_.size(), 7u);
    // A and B: chest radiographs, C: a knee MR, D (loaded later by some tests): chest DX.
    studies_ = {
        {"CR",
         UID_ComputedRadiographyImageStorage,
         "20240105",
         "CHEST PA",
         "ACC1",
         "CHEST",
         {0, 1}},
        {"DX",
         UID_DigitalXRayImageStorageForPresentation,
         "20240210",
         "CHEST AP PORTABLE",
         "ACC2",
         "CHEST",
         {2, 3}},
        {"MR", UID_MRImageStorage, "20230301", "KNEE MRI", "ACC3", "KNEE", {4}},
        {"DX",
         UID_DigitalXRayImageStorageForPresentation,
         "20240320",
         "CHEST PA",
         "ACC4",
         "CHEST",
         {5}},
    };
    for (StudySpec& spec : studies_) {
      spec.study_uid = NewUid();
      spec.series_uid = NewUid();
      for (int i : spec.images) Retag(files_[i], spec, spec.study_uid, spec.series_uid);
    }
    port_ = FreePort();
    orthanc_ = std::make_unique<Orthanc>(dir_ + "/orthanc", port_);
    ASSERT_TRUE(orthanc_->Start());
    ASSERT_TRUE(Load(0));
    ASSERT_TRUE(Load(1));
    ASSERT_TRUE(Load(2));
  }

  ::testing::AssertionResult Load(int study) {
    std::vector<std::string> paths;
    for (int i : studies_[study].images) paths.push_back(files_[i]);
    return orthanc_->Store(paths);
  }

  PacsSource Config() const {
    PacsSource config;
    config.set_host("127.0.0.1");
    config.set_port(port_);
    config.set_called_ae_title(kPacsAe);
    config.set_calling_ae_title(kOurAe);
    config.set_cache_dir(dir_ + "/cache");
    config.set_labels_csv(dir_ + "/phantom/labels.csv");
    config.set_timeout_seconds(10);
    return config;
  }

  PacsSource Chest() const {
    PacsSource config = Config();
    config.add_modalities("CR");
    config.add_modalities("DX");
    return config;
  }

  std::set<std::string> Accessions(const PacsSource& config) {
    absl::StatusOr<std::vector<PacsStudyInfo>> studies = QueryPacs(config);
    EXPECT_TRUE(studies.ok()) << studies.status();
    std::set<std::string> out;
    if (studies.ok()) {
      for (const PacsStudyInfo& s : *studies) out.insert(s.accession_number);
    }
    return out;
  }

  PacsSyncReport Sync(const PacsSource& config, absl::Status* status = nullptr,
                      const PacsSyncOptions& options = {}) {
    PacsSyncReport report;
    absl::Status synced = SyncPacs(config, options, &report);
    if (status != nullptr) {
      *status = synced;
    } else {
      EXPECT_TRUE(synced.ok()) << synced << "\n" << DescribePacsSync(report);
    }
    return report;
  }

  // The cache's files: each must decode, and be listed in the index.
  std::vector<std::string> CachedFiles() {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(PacsCache::InstancesDir(dir_ + "/cache"))) {
      EXPECT_TRUE(DecodeDicom(e.path().string(), 0).ok()) << e.path();
      out.push_back(e.path().filename().string());
    }
    return out;
  }

  std::string dir_;
  std::vector<std::string> files_;
  std::vector<StudySpec> studies_;
  int port_ = 0;
  std::unique_ptr<Orthanc> orthanc_;
};

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
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot reach PACS"));
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
