// The pacs source over DICOMweb against a real Orthanc with Debian's orthanc-dicomweb plugin
// (client/pacs_dicomweb_test_util.h), loaded with phantom studies as the DIMSE tests are.
#include "client/pacs_dicomweb.h"

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "client/dicom.h"
#include "client/pacs.h"
#include "client/pacs_dicomweb_test_util.h"
#include "common/file_util.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/data_check.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::DicomWebTest;
using ::fl::testing::PacsTest;
using ::fl::testing::Retag;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// One line per series of a query's result, sorted: what must not depend on the protocol.
std::vector<std::string> Lines(const absl::StatusOr<std::vector<PacsStudyInfo>>& studies) {
  EXPECT_TRUE(studies.ok()) << studies.status();
  std::vector<std::string> out;
  if (!studies.ok()) return out;
  for (const PacsStudyInfo& st : *studies) {
    for (const PacsSeriesInfo& se : st.series) {
      out.push_back(absl::StrFormat("%s %s %s '%s' | %s %s %s %s %d", st.study_uid,
                                    st.accession_number, st.study_date, st.study_description,
                                    se.study_uid, se.series_uid, se.modality, se.body_part,
                                    se.instances));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST_F(DicomWebTest, QueriesMatchTheDimseQueriesOnTheSamePacs) {
  std::vector<PacsSource> configs(9, Config());
  configs[1] = Chest();
  configs[2].add_modalities("MR");
  configs[3].set_study_date_range("20240201-20241231");
  configs[4].set_study_date_range("-20231231");
  configs[5].set_study_description("*PORTABLE*");
  configs[6].set_body_part("KNEE");
  configs[7].add_accession_numbers("ACC1");
  configs[7].add_accession_numbers("ACC3");
  configs[8].set_study_date_range("20240101-");
  configs[8].set_study_description("CHEST P?");
  const std::vector<size_t> expected = {3, 2, 1, 1, 1, 1, 1, 2, 1};
  for (size_t i = 0; i < configs.size(); ++i) {
    const std::vector<std::string> dimse = Lines(QueryPacs(configs[i]));
    EXPECT_EQ(dimse.size(), expected[i]) << "filter " << i;
    EXPECT_EQ(Lines(QueryPacs(Web(configs[i]))), dimse) << "filter " << i;
  }
  PacsSource config = Web(Config());
  config.add_accession_numbers("ACC2");
  absl::StatusOr<std::vector<PacsStudyInfo>> studies = QueryPacs(config);
  ASSERT_TRUE(studies.ok()) << studies.status();
  ASSERT_EQ(studies->size(), 1u);
  EXPECT_EQ((*studies)[0].study_description, "CHEST AP PORTABLE");
  ASSERT_EQ((*studies)[0].series.size(), 1u);
  EXPECT_EQ((*studies)[0].series[0].instances, 2);
  EXPECT_EQ((*studies)[0].series[0].body_part, "CHEST");
}

TEST_F(DicomWebTest, QidoResultsArePagedWithLimitAndOffset) {
  absl::StatusOr<std::unique_ptr<DicomWebConnection>> web = DicomWebConnection::Open(Web(Config()));
  ASSERT_TRUE(web.ok()) << web.status();
  (*web)->set_page_size(1);
  absl::StatusOr<std::vector<DicomRow>> rows =
      (*web)->Find("STUDY", {{DCM_StudyInstanceUID, ""}, {DCM_AccessionNumber, ""}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  std::set<std::string> accessions;
  for (DicomRow& row : *rows) accessions.insert(row[DCM_AccessionNumber]);
  EXPECT_THAT(accessions, UnorderedElementsAre("ACC1", "ACC2", "ACC3"));
  (*web)->set_page_size(2);
  rows = (*web)->Find("IMAGE", {{DCM_StudyInstanceUID, studies_[1].study_uid},
                                {DCM_SeriesInstanceUID, studies_[1].series_uid},
                                {DCM_SOPInstanceUID, ""}});
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->size(), 2u);
}

TEST_F(DicomWebTest, AWrongOrMissingTokenIsPermissionDeniedAndTheCacheUntouched) {
  PacsSource config = Web(Chest());
  WritePrivate(dir_ + "/wrong", "not-the-token\n");
  config.mutable_dicomweb()->set_bearer_token_file(dir_ + "/wrong");
  absl::Status status;
  PacsSyncReport report = Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(Url() + "/studies"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("HTTP 403"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("bearer_token_file"));
  EXPECT_EQ(report.cached, 0);
  EXPECT_TRUE(CachedFiles().empty());

  config.mutable_dicomweb()->clear_bearer_token_file();
  Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("no token is sent"));

  // A token others may read is refused before anything is sent; the right one works.
  config = Web(Chest());
  fs::permissions(dir_ + "/token", fs::perms::group_read, fs::perm_options::add);
  Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("source.pacs.dicomweb.bearer_token_file: " + dir_ + "/token is readable"));
  fs::permissions(dir_ + "/token", fs::perms::group_read, fs::perm_options::remove);
  EXPECT_EQ(Sync(config).fetched, 4);
  // The file is read at each sync: a token rotated there counts at once.
  WritePrivate(dir_ + "/token", "revoked-token\n");
  Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
}

TEST_F(DicomWebTest, AServerThatIsDownIsUnavailable) {
  orthanc_->Kill(SIGTERM);
  absl::Status status;
  PacsSyncReport report = Sync(Web(Chest()), &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(Url()));
  status = SyncPacsAtStart(Web(Chest()), "pacs_dicomweb_test");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
}

TEST_F(DicomWebTest, FlctlDataSyncAndTheSourceWork) {
  DataSourceConfig source;
  *source.mutable_pacs() = Web(Chest());
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(SyncDataSource(source, false, false), 0);
  EXPECT_THAT(::testing::internal::GetCapturedStdout(), HasSubstr("fetched: 4 instances"));
  orthanc_->Kill(SIGTERM);
  EXPECT_EQ(CheckDataSource(source, false), 0);  // rounds read the cache only
}

// A server that answers each request with handler(target), whole, and closes the connection:
// for what Orthanc never sends (it checks what it stores): parts that are not DICOM, and a
// body that ends mid-part while the connection closes cleanly.
class CannedHttp {
 public:
  explicit CannedHttp(std::function<std::string(const std::string&)> handler)
      : handler_(std::move(handler)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(fd_, 8);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~CannedHttp() {
    ::shutdown(fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    ::close(fd_);
  }
  int port() const { return port_; }

 private:
  void Serve() {
    for (int c; (c = ::accept(fd_, nullptr, nullptr)) >= 0; ::close(c)) {
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::read(c, buf, sizeof(buf));
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      const size_t from = request.find(' ') + 1;
      const std::string answer = handler_(request.substr(from, request.find(' ', from) - from));
      for (size_t at = 0; at < answer.size();) {
        const ssize_t n = ::write(c, answer.data() + at, answer.size() - at);
        if (n <= 0) break;
        at += static_cast<size_t>(n);
      }
    }
  }

  const std::function<std::string(const std::string&)> handler_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

std::string Json(const std::string& json) {
  return absl::StrCat("HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: ",
                      json.size(), "\r\nConnection: close\r\n\r\n", json);
}

std::string Part(const std::string& type, const std::string& body) {
  return absl::StrCat("\r\n--B0undary\r\nContent-Type: ", type, "\r\n\r\n", body);
}

// One study with one CR series of 3 instances; the series' retrieval is `wado`'s parts.
std::function<std::string(const std::string&)> CannedPacs(std::string wado) {
  return [wado](const std::string& target) -> std::string {
    if (absl::StartsWith(target, "/dicom-web/studies?")) {
      return Json(R"([{"0020000D": {"vr": "UI", "Value": ["1.2.3.9"]}}])");
    }
    if (absl::StartsWith(target, "/dicom-web/studies/1.2.3.9/series?")) {
      return Json(R"([{"0020000E": {"vr": "UI", "Value": ["1.2.3.9.1"]},)"
                  R"( "00080060": {"vr": "CS", "Value": ["CR"]},)"
                  R"( "00201209": {"vr": "IS", "Value": [3]}}])");
    }
    if (target == "/dicom-web/studies/1.2.3.9/series/1.2.3.9.1") {
      return absl::StrCat(
          "HTTP/1.1 200 OK\r\nContent-Type: multipart/related; type=\"application/dicom\"; "
          "boundary=B0undary\r\nConnection: close\r\n\r\n",
          wado);
    }
    return "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  };
}

TEST_F(PacsTest, DicomWebPartsThatAreNotDicomAreRejectedAndNeverCached) {
  Retag(files_[0], studies_[0], "1.2.3.9", "1.2.3.9.1");
  absl::StatusOr<std::string> valid = ReadFileToString(files_[0]);
  ASSERT_TRUE(valid.ok());
  CannedHttp server(CannedPacs(absl::StrCat(
      "preamble", Part("application/dicom", "no DICOM here"), Part("text/html", "<p>oops</p>"),
      Part("application/dicom", *valid), "\r\n--B0undary--\r\n")));
  PacsSource config = Config();
  config.mutable_dicomweb()->set_url(
      absl::StrCat("http://127.0.0.1:", server.port(), "/dicom-web"));
  PacsSyncReport report = Sync(config);
  EXPECT_EQ(report.fetched, 1);
  EXPECT_EQ(report.rejected, 2);
  ASSERT_EQ(report.rejects.size(), 2u);
  EXPECT_THAT(report.rejects[0].reason, HasSubstr("part 1 of "));
  EXPECT_THAT(report.rejects[0].reason, HasSubstr("not DICOM"));
  EXPECT_THAT(report.rejects[1].reason, HasSubstr("'text/html', not application/dicom"));
  EXPECT_EQ(CachedFiles().size(), 1u);
}

TEST_F(PacsTest, DicomWebBodyCutShortIsUnavailableAndKeepsTheCompleteParts) {
  Retag(files_[0], studies_[0], "1.2.3.9", "1.2.3.9.1");
  absl::StatusOr<std::string> valid = ReadFileToString(files_[0]);
  ASSERT_TRUE(valid.ok());
  CannedHttp server(CannedPacs(absl::StrCat(Part("application/dicom", *valid),
                                            Part("application/dicom", valid->substr(0, 300)))));
  PacsSource config = Config();
  config.mutable_dicomweb()->set_url(
      absl::StrCat("http://127.0.0.1:", server.port(), "/dicom-web"));
  absl::Status status;
  PacsSyncReport report = Sync(config, &status);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("broke off"));
  EXPECT_EQ(report.fetched, 1);
  EXPECT_EQ(report.rejected, 0);
  EXPECT_EQ(CachedFiles().size(), 1u);
  EXPECT_TRUE(fs::is_empty(dir_ + "/cache/incoming"));
}

TEST(DicomWebConfigTest, NoHostOrAeTitlesButAUrlNamingTheField) {
  PacsSource config;
  config.set_cache_dir("/tmp/cache");
  config.mutable_dicomweb()->set_url("https://pacs.example/dicom-web/");
  EXPECT_TRUE(ValidatePacsSource(config).ok()) << ValidatePacsSource(config);
  PacsSource bad = config;
  bad.mutable_dicomweb()->set_url("pacs.example:8042");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()),
              HasSubstr("source.pacs.dicomweb.url"));
  bad.mutable_dicomweb()->set_url("");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()),
              HasSubstr("source.pacs.dicomweb.url"));
  bad = config;
  bad.mutable_dicomweb()->set_url("http://pacs.example/dicom-web");
  bad.mutable_dicomweb()->mutable_tls()->set_ca_file("/ca.pem");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()),
              HasSubstr("source.pacs.dicomweb.tls"));
  bad = config;
  bad.mutable_dicomweb()->mutable_tls()->set_key_file("/k.pem");
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()),
              HasSubstr("source.pacs.dicomweb.tls.cert_file"));
  bad = config;
  bad.mutable_dicomweb()->set_timeout_seconds(4000);
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()),
              HasSubstr("source.pacs.dicomweb.timeout_seconds"));
  bad = config;
  bad.clear_dicomweb();
  EXPECT_THAT(std::string(ValidatePacsSource(bad).message()), HasSubstr("source.pacs.host"));
}

TEST(DicomWebPartTest, APartThatIsNotDicomIsDataLossWithTheReason) {
  MultipartPart garbage{{{"content-type", "application/dicom"}}, "this is no DICOM object"};
  absl::StatusOr<std::unique_ptr<DcmFileFormat>> read = ReadDicomPart(garbage);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("not DICOM"));
  MultipartPart html{{{"content-type", "text/html"}}, "<html>error</html>"};
  read = ReadDicomPart(html);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(read.status().message()), HasSubstr("'text/html'"));
}

}  // namespace
}  // namespace fl
