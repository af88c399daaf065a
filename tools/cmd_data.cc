// flctl data check: reads every file of a data folder, or of any data source (a client config's,
// or a public dataset's root), exactly as the client would and reports what it found, per file
// and in total.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/data_source.h"
#include "client/dataset.h"
#include "client/dicom.h"
#include "common/config.h"
#include "common/proto_json.h"
#include "common/status.h"
#include "fl/report.pb.h"
#include "tools/cli.h"

namespace fl {
namespace {

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
  return absl::StrCat("ok    ", r.path, ": ", im.rows, "x", im.cols, " ", im.bits_stored, "-bit ",
                      im.photometric, " ", im.transfer_syntax_name, " (", im.transfer_syntax, ")",
                      r.labelled ? " labelled" : "");
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
  (json ? std::cerr : std::cout) << "files: " << files->size() << ", decoded: " << decoded
                                 << ", skipped: " << files->size() - decoded
                                 << (labels_csv.empty() ? ""
                                                        : absl::StrCat(", with labels: ", labelled))
                                 << "\n";
  return 0;
}

// ---- Any source (a client config's, or --source KIND with DIR as its root).

std::string Stripped(const std::string& path, const absl::Status& status) {
  std::string message(status.message());
  const std::string prefix = path + ": ";
  return message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
}

void Report(const DataCheckFile& file, bool json, bool* first) {
  if (json) {
    std::cout << (*first ? "\n" : ",\n") << ToJson(file);
  } else if (file.ok()) {
    std::cout << "ok    " << file.path() << (file.labelled() ? " labelled" : "") << "\n";
  } else {
    std::cout << "skip  " << file.path() << ": " << file.reason() << "\n";
  }
  *first = false;
}

bool HasLabel(const Sample& sample) {
  for (float v : sample.labels)
    if (!std::isnan(v)) return true;
  return false;
}

// Lists the source as the client does, then decodes every listed sample (at 64 x 64).
int CheckSource(const DataSourceConfig& config, bool json) {
  auto source = OpenDataSource(config);
  if (!source.ok()) return cli::Fail(source.status(), 2);
  auto data = (*source)->List(0.0);
  if (!data.ok()) return cli::Fail(data.status(), 2);
  bool first = true;
  if (json) std::cout << "[";
  for (const SkippedItem& skip : data->skips) {
    DataCheckFile file;
    file.set_path(skip.what);
    file.set_reason(Stripped(skip.what, absl::InvalidArgumentError(skip.reason)));
    Report(file, json, &first);
  }
  int decoded = 0, labelled = 0, corrupt = 0;
  for (const std::vector<Sample>* split : {&data->train, &data->test}) {
    for (const Sample& sample : *split) {
      DataCheckFile file;
      file.set_path(sample.path);
      file.set_sop_instance_uid(sample.sop_instance_uid);
      auto pixels = (*source)->Load(sample, PixelShape::Square(64));
      file.set_ok(pixels.ok());
      if (!pixels.ok()) file.set_reason(Stripped(sample.path, pixels.status()));
      file.set_labelled(HasLabel(sample));
      decoded += pixels.ok();
      corrupt += !pixels.ok();
      labelled += pixels.ok() && file.labelled();
      Report(file, json, &first);
    }
  }
  if (json) std::cout << "\n]\n";
  (json ? std::cerr : std::cout) << "source: " << (*source)->Kind()
                                 << ", images: " << decoded + corrupt << ", decoded: " << decoded
                                 << ", skipped: " << data->skipped_files + corrupt << " (listing "
                                 << data->skipped_files << ", decoding " << corrupt
                                 << "), with labels: " << labelled
                                 << ", without labels: " << data->unlabelled_files
                                 << ", filtered out: " << data->filtered
                                 << ", findings: " << data->label_names.size() << "\n";
  return 0;
}

// The source a client config names (data_dir and labels_csv, or source); TLS and the rest are
// not checked here.
absl::StatusOr<DataSourceConfig> SourceOfConfig(const std::string& path) {
  ASSIGN_OR_RETURN(ClientConfig config, LoadTextProto<ClientConfig>(path));
  return SourceOf(config);
}

absl::StatusOr<DataSourceConfig> SourceOfKind(const std::string& kind, const std::string& root,
                                              const std::string& labels) {
  DataSourceConfig config;
  if (kind == "dicom_folder") {
    config.mutable_dicom_folder()->set_dir(root);
    config.mutable_dicom_folder()->set_labels_csv(labels);
  } else if (kind == "chexpert") {
    config.mutable_chexpert()->set_root(root);
  } else if (kind == "mimic_cxr") {
    config.mutable_mimic_cxr()->set_root(root);
  } else if (kind == "chestxray14") {
    config.mutable_chestxray14()->set_root(root);
  } else if (kind == "vindr_cxr") {
    config.mutable_vindr_cxr()->set_root(root);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown source kind '", kind, "'"));
  }
  return config;
}

cli::CommandRun SetUpData(CLI::App& app) {
  struct DataArgs {
    std::string dir;
    std::string labels;
    std::string config;
    std::string kind;
    bool json = false;
  };
  auto args = std::make_shared<DataArgs>();
  app.require_subcommand(1);
  CLI::App* check = app.add_subcommand(
      "check",
      "read every file of DIR (or of a source) as the client would; report per file and in "
      "total");
  check->add_option("DIR", args->dir, "the data folder (with --source: the dataset's root)");
  check->add_option("--labels", args->labels, "labels CSV, to count the labelled images");
  check->add_option("--config", args->config,
                    "a client config file: check the source it names (data_dir or source)");
  check->add_option("--source", args->kind,
                    "the kind of dataset at DIR, read with its defaults: dicom_folder, "
                    "chexpert, mimic_cxr, chestxray14 or vindr_cxr");
  check->add_flag("--json", args->json,
                  "a JSON list of fl.DataCheckFile on stdout (the totals on stderr)");
  return [args] {
    if (!args->config.empty()) {
      if (!args->dir.empty() || !args->kind.empty()) {
        return cli::Fail(absl::InvalidArgumentError("--config takes no DIR and no --source"), 2);
      }
      auto config = SourceOfConfig(args->config);
      if (!config.ok()) return cli::Fail(config.status(), 2);
      return CheckSource(*config, args->json);
    }
    if (args->dir.empty()) {
      return cli::Fail(absl::InvalidArgumentError("give DIR, or --config FILE"), 2);
    }
    if (args->kind.empty()) return Check(args->dir, args->labels, args->json);
    auto config = SourceOfKind(args->kind, args->dir, args->labels);
    if (!config.ok()) return cli::Fail(config.status(), 2);
    return CheckSource(*config, args->json);
  };
}

FL_COMMAND("data",
           "check a data folder or source as the client reads it (data check DIR, data check "
           "--config FILE, data check --source KIND DIR)",
           SetUpData);

}  // namespace
}  // namespace fl
