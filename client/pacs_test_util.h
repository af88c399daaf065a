// For the pacs tests: a real PACS (Debian's Orthanc) started on loopback with its own config
// and storage, phantom studies to load into it with storescu, and the fixture that does both.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/dicom.h"
#include "client/pacs.h"
#include "common/test_dir.h"
#include "common/x509.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "gtest/gtest.h"
#include "tools/dicom_write.h"
#include "tools/phantom.h"

namespace fl {
namespace testing {

namespace fs = std::filesystem;

inline constexpr char kPacsAe[] = "FLTESTPACS";
inline constexpr char kOurAe[] = "FLCLIENT";

inline std::string OrthancBinary() {
  for (const char* path : {"/usr/sbin/Orthanc", "/usr/bin/Orthanc"}) {
    if (::access(path, X_OK) == 0) return path;
  }
  return "";
}

inline int FreePort() {
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

inline bool Accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

inline constexpr char kNoHttp[] = R"("Plugins": [], "HttpServerEnabled": false)";

// One Orthanc process: DICOM on loopback at `port`, called AE title checked, our AE title known
// and allowed C-FIND and C-GET; anyone may C-STORE (the loader). `extra`: more settings (JSON
// members, each followed by a comma); `loader_args`: storescu's options for them (e.g. TLS);
// `http`: the HTTP server's and plugins' settings (none by default; see client/
// pacs_dicomweb_test.cc), with `http_port` to wait for at Start.
class Orthanc {
 public:
  Orthanc(const std::string& dir, int port, const std::string& extra = "",
          const std::string& loader_args = "", const std::string& http = kNoHttp, int http_port = 0)
      : dir_(dir), port_(port), http_port_(http_port), loader_args_(loader_args) {
    fs::create_directories(dir + "/storage");
    const std::string storage = absl::StrCat("\"", dir, "/storage\"");
    const std::string modality =
        absl::StrCat(R"({"AET": ")", kOurAe, R"(", "Host": "127.0.0.1", "Port": 104,)",
                     R"( "AllowFind": true, "AllowGet": true, "AllowMove": false})");
    std::ofstream(dir + "/orthanc.json") << absl::StrCat(
        "{", extra, R"("Name": "fl-test", "StorageDirectory": )", storage,
        R"(, "IndexDirectory": )", storage, ", ", http, ",",
        R"( "RemoteAccessAllowed": false, "DicomAet": ")", kPacsAe, R"(", "DicomPort": )", port,
        R"(, "DicomCheckCalledAet": true, "DicomAlwaysAllowStore": true,)",
        R"( "DicomAlwaysAllowEcho": true, "DicomModalities": {"fl": )", modality, "}}");
  }
  ~Orthanc() { Kill(SIGKILL); }

  // Starts it and waits until its DICOM port (and HTTP port, if any) accepts connections.
  ::testing::AssertionResult Start() {
    if (pid_ > 0) return ::testing::AssertionFailure() << "Orthanc is running already";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a test that crashed
      const std::string log = dir_ + "/orthanc.log";
      freopen(log.c_str(), "a", stdout);
      freopen(log.c_str(), "a", stderr);
      const std::string binary = OrthancBinary(), config = dir_ + "/orthanc.json";
      ::execl(binary.c_str(), binary.c_str(), config.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 300; ++i) {
      if (Accepts(port_) && (http_port_ == 0 || Accepts(http_port_))) {
        return ::testing::AssertionSuccess();
      }
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
        absl::StrCat("storescu ", loader_args_, " -aec ", kPacsAe, " -aet LOADER 127.0.0.1 ", port_,
                     " ", absl::StrJoin(files, " "), " >>", dir_, "/storescu.log 2>&1");
    if (std::system(command.c_str()) == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "failed: " << command;
  }

 private:
  const std::string dir_;
  const int port_;
  const int http_port_;
  const std::string loader_args_;
  pid_t pid_ = -1;
};

// Test certificates under `dir`, each file mode 0600: ca.pem (a CA of the test's own),
// pacs.pem and pacs.key (the PACS, for localhost and 127.0.0.1), ours.pem and ours.key (the
// client), other-ca.pem (a CA that signed neither). From the project's CA code (common/x509.h).
inline ::testing::AssertionResult WriteTestPki(const std::string& dir) {
  fs::create_directories(dir);
  absl::StatusOr<KeyAndCert> ca = CreateCa("test-pacs-ca", 2);
  absl::StatusOr<KeyAndCert> other_ca = CreateCa("another-ca", 2);
  if (!ca.ok() || !other_ca.ok()) return ::testing::AssertionFailure() << "CreateCa failed";
  absl::StatusOr<KeyAndCert> pacs = IssueCert(*ca, {"pacs", "", {"localhost"}, {"127.0.0.1"}, 2});
  absl::StatusOr<KeyAndCert> ours = IssueCert(*ca, {"flclient", "", {}, {}, 2});
  if (!pacs.ok() || !ours.ok()) return ::testing::AssertionFailure() << "IssueCert failed";
  for (const auto& [name, text] :
       {std::pair{"ca.pem", &ca->cert_pem}, std::pair{"other-ca.pem", &other_ca->cert_pem},
        std::pair{"pacs.pem", &pacs->cert_pem}, std::pair{"pacs.key", &pacs->key_pem},
        std::pair{"ours.pem", &ours->cert_pem}, std::pair{"ours.key", &ours->key_pem}}) {
    const std::string path = dir + "/" + name;
    std::ofstream(path) << *text;
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  }
  return ::testing::AssertionSuccess();
}

// A study of phantom images: one series of `modality`.
struct StudySpec {
  std::string modality, sop_class, date, description, accession, body_part;
  std::vector<int> images;            // indices into the phantom files
  std::string study_uid, series_uid;  // given at SetUp
};

// Rewrites the study, series, patient and acquisition attributes of a phantom file.
inline void Retag(const std::string& path, const StudySpec& spec, const std::string& study_uid,
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
    const std::string cr = UID_ComputedRadiographyImageStorage;
    const std::string dx = UID_DigitalXRayImageStorageForPresentation;
    studies_.push_back({"CR", cr, "20240105", "CHEST PA", "ACC1", "CHEST", {0, 1}});
    studies_.push_back({"DX", dx, "20240210", "CHEST AP PORTABLE", "ACC2", "CHEST", {2, 3}});
    studies_.push_back({"MR", UID_MRImageStorage, "20230301", "KNEE MRI", "ACC3", "KNEE", {4}});
    studies_.push_back({"DX", dx, "20240320", "CHEST PA", "ACC4", "CHEST", {5}});
    for (StudySpec& spec : studies_) {
      spec.study_uid = NewUid();
      spec.series_uid = NewUid();
      for (int i : spec.images) Retag(files_[i], spec, spec.study_uid, spec.series_uid);
    }
    port_ = FreePort();
    orthanc_ = MakeOrthanc();
    ASSERT_TRUE(orthanc_->Start());
    ASSERT_TRUE(Load(0));
    ASSERT_TRUE(Load(1));
    ASSERT_TRUE(Load(2));
  }

  // The PACS; a fixture for a PACS set up otherwise (TLS) overrides it.
  virtual std::unique_ptr<Orthanc> MakeOrthanc() {
    return std::make_unique<Orthanc>(dir_ + "/orthanc", port_);
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

}  // namespace testing
}  // namespace fl
