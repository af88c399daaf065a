// For the DICOMweb tests: Orthanc with Debian's orthanc-dicomweb plugin on loopback, its
// /dicom-web/ routes guarded by a bearer token that Orthanc itself checks, with a Lua
// IncomingHttpRequestFilter (Orthanc checks bearer tokens only through its authorization
// plugin, which Debian 12 does not package; its HTTP basic authentication would not look at
// our header).
#pragma once

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/pacs_test_util.h"

namespace fl {
namespace testing {

inline constexpr char kDicomWebPlugin[] = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";
inline constexpr char kToken[] = "fl-test-token-7f3a9c";

class DicomWebTest : public PacsTest {
 protected:
  void SetUp() override {
    ASSERT_EQ(::access(kDicomWebPlugin, R_OK), 0)
        << kDicomWebPlugin
        << " is missing: run scripts/deps.sh, which installs Debian's orthanc-dicomweb";
    PacsTest::SetUp();
  }

  std::unique_ptr<Orthanc> MakeOrthanc() override {
    do {
      http_port_ = FreePort();
    } while (http_port_ == port_);
    const std::string lua = dir_ + "/token.lua";
    std::ofstream(lua) << "function IncomingHttpRequestFilter(method, uri, ip, username, headers)\n"
                          "  if string.sub(uri, 1, 10) ~= '/dicom-web' then return true end\n"
                          "  return headers['authorization'] == 'Bearer "
                       << kToken << "'\nend\n";
    WritePrivate(dir_ + "/token", absl::StrCat(kToken, "\n"));
    const std::string http = absl::StrCat(
        R"("Plugins": [")", kDicomWebPlugin, R"("], "HttpServerEnabled": true, "HttpPort": )",
        http_port_, R"(, "AuthenticationEnabled": false, "LuaScripts": [")", lua,
        R"("], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"})");
    return std::make_unique<Orthanc>(dir_ + "/orthanc", port_, "", "", http, http_port_);
  }

  // The service as the client reaches it: Orthanc's HTTP port, or HTTPS in front of it.
  std::string Url() const {
    return https_port_ > 0 ? absl::StrCat("https://127.0.0.1:", https_port_, "/dicom-web")
                           : absl::StrCat("http://127.0.0.1:", http_port_, "/dicom-web");
  }

  // `config` over DICOMweb, with the token.
  PacsSource Web(PacsSource config) const {
    config.mutable_dicomweb()->set_url(Url());
    config.mutable_dicomweb()->set_bearer_token_file(dir_ + "/token");
    config.mutable_dicomweb()->set_timeout_seconds(10);
    return config;
  }

  static void WritePrivate(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
    std::filesystem::permissions(
        path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  }

  int http_port_ = 0;
  int https_port_ = 0;  // set by a fixture that puts HTTPS in front
};

}  // namespace testing
}  // namespace fl
