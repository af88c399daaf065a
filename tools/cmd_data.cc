// flctl data check: reads every file of a data folder exactly as the client would and reports
// what it found, per file and in total.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/dataset.h"
#include "client/dicom.h"
#include "common/proto_json.h"
#include "common/status.h"
#include "fl/report.pb.h"
#include "tools/cli.h"

namespace fl {
namespace {

constexpr char kUsage[] = "usage: flctl data check DIR [--labels CSV] [--json]";

struct FileReport {
  std::string path;
  absl::StatusOr<DicomImage> image;
  bool labelled = false;
};

// Why a file was skipped, without the "PATH: " prefix the decoder's messages carry.
std::string Reason(const FileReport& r) {
  if (r.image.ok()) return "";
  std::string message(r.image.status().message());
  const std::string prefix = r.path + ": ";
  return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
}

DataCheckFile JsonObject(const FileReport& r) {
  DataCheckFile out;
  out.set_path(r.path);
  out.set_ok(r.image.ok());
  out.set_reason(Reason(r));
  out.set_labelled(r.labelled);
  if (!r.image.ok()) return out;
  const DicomImage& im = *r.image;
  out.set_rows(im.rows);
  out.set_cols(im.cols);
  out.set_bits(im.bits_stored);
  out.set_photometric(im.photometric);
  out.set_transfer_syntax(im.transfer_syntax);
  out.set_transfer_syntax_name(im.transfer_syntax_name);
  out.set_sop_instance_uid(im.sop_instance_uid);
  return out;
}

std::string TextLine(const FileReport& r) {
  if (!r.image.ok()) return absl::StrCat("skip  ", r.path, ": ", Reason(r));
  const DicomImage& im = *r.image;
  return absl::StrCat("ok    ", r.path, ": ", im.rows, "x", im.cols, " ", im.bits_stored,
                      "-bit ", im.photometric, " ", im.transfer_syntax_name, " (",
                      im.transfer_syntax, ")", r.labelled ? " labelled" : "");
}

int Check(const std::string& dir, const std::string& labels_csv, bool json) {
  LabelTable table;
  if (!labels_csv.empty()) {
    auto read = ReadLabelsCsv(labels_csv);
    if (!read.ok()) return cli::Fail(read.status(), 2);
    table = *std::move(read);
  }
  const LabelIndex index(table);
  auto files = ListDataFiles(dir, labels_csv);
  if (!files.ok()) return cli::Fail(files.status(), 2);
  int decoded = 0, labelled = 0;
  if (json) std::cout << "[";
  for (size_t i = 0; i < files->size(); ++i) {
    FileReport r{(*files)[i], DecodeDicom((*files)[i], 0)};
    if (r.image.ok()) {
      ++decoded;
      const std::string rel = std::filesystem::relative(r.path, dir).generic_string();
      r.labelled = !labels_csv.empty() && index.Find(r.image->sop_instance_uid, rel) != nullptr;
      labelled += r.labelled;
    }
    if (json) {
      std::cout << (i ? ",\n" : "\n") << ToJson(JsonObject(r));
    } else {
      std::cout << TextLine(r) << "\n";
    }
  }
  if (json) std::cout << "\n]\n";
  (json ? std::cerr : std::cout)
      << "files: " << files->size() << ", decoded: " << decoded
      << ", skipped: " << files->size() - decoded
      << (labels_csv.empty() ? "" : absl::StrCat(", with labels: ", labelled)) << "\n";
  return 0;
}

int RunData(const std::vector<std::string>& argv) {
  auto args = cli::Args::Parse(argv, {"json"});
  if (!args.ok()) return cli::Fail(args.status(), 2);
  absl::Status known = args->CheckKnown({"labels", "json"});
  if (!known.ok()) return cli::Fail(absl::InvalidArgumentError(absl::StrCat(known.message(), "\n", kUsage)), 2);
  const auto& words = args->positional();
  if (words.size() != 2 || words[0] != "check") {
    return cli::Fail(absl::InvalidArgumentError(kUsage), 2);
  }
  return Check(words[1], args->Get("labels"), args->Has("json"));
}

FL_COMMAND("data", "check a DICOM data folder as the client reads it (data check DIR)", kUsage,
           RunData);

}  // namespace
}  // namespace fl
