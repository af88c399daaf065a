// flctl data check: reads every file of a data folder, or of any data source (a client config's,
// or a public dataset's root), exactly as the client would and reports what it found, per file
// and in total. flctl data sync: fetches what a pacs source's cache lacks (client/pacs.h).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/dataset.h"
#include "client/dicom.h"
#include "client/pixel_cache.h"
#include "common/config.h"
#include "common/proto_json.h"
#include "common/status.h"
#include "fl/report.pb.h"
#include "tools/cli.h"
#include "client/data_source.h"
#include "tools/data_check.h"

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

// The state of the config's pixel cache (client/pixel_cache.h), after the totals.
void ReportPixelCache(const ClientConfig& config, bool json) {
  if (config.pixel_cache_mib() == 0) return;
  const std::string dir = (std::filesystem::path(config.state_dir()) / "pixel_cache").string();
  auto stats = InspectPixelCache(dir);
  std::ostream& out = json ? std::cerr : std::cout;
  if (!stats.ok()) {
    out << "pixel cache: none yet (" << dir << ")\n";
    return;
  }
  out << "pixel cache: " << stats->entries << " entries, "
      << absl::StrFormat("%.1f", stats->bytes / 1048576.0) << " of " << config.pixel_cache_mib()
      << " MiB (" << dir << ")\n";
}

cli::CommandRun SetUpData(CLI::App& app) {
  struct DataArgs {
    std::string dir;
    std::string labels;
    std::string config;
    std::string kind;
    bool json = false;
    bool retry_rejected = false;
    bool verify = false;
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
                    "chexpert, mimic_cxr, chestxray14 or vindr_cxr (a pacs source: --config)");
  check->add_flag("--json", args->json,
                  "a JSON list of fl.DataCheckFile on stdout (the totals on stderr)");
  CLI::App* sync = app.add_subcommand(
      "sync",
      "fetch what the cache of a client config's pacs source lacks from the PACS (as fl-client "
      "does at start); print what was fetched and skipped, and why");
  sync->add_option("--config", args->config, "the client config file naming a pacs source")
      ->required();
  sync->add_flag("--retry-rejected", args->retry_rejected,
                 "ask again for objects refused as corrupt by an earlier sync");
  sync->add_flag("--verify", args->verify,
                 "re-hash every cached file first; one that changed is removed and fetched again");
  return [args, sync] {
    if (sync->parsed()) {
      auto config = LoadTextProto<ClientConfig>(args->config);
      if (!config.ok()) return cli::Fail(config.status(), 2);
      return SyncDataSource(SourceOf(*config), args->retry_rejected, args->verify);
    }
    if (!args->config.empty()) {
      if (!args->dir.empty() || !args->kind.empty()) {
        return cli::Fail(absl::InvalidArgumentError("--config takes no DIR and no --source"), 2);
      }
      auto config = LoadTextProto<ClientConfig>(args->config);
      if (!config.ok()) return cli::Fail(config.status(), 2);
      const int code = CheckDataSource(SourceOf(*config), args->json);
      if (code == 0) ReportPixelCache(*config, args->json);
      return code;
    }
    if (args->dir.empty()) {
      return cli::Fail(absl::InvalidArgumentError("give DIR, or --config FILE"), 2);
    }
    if (args->kind.empty()) return Check(args->dir, args->labels, args->json);
    auto config = SourceOfKind(args->kind, args->dir, args->labels);
    if (!config.ok()) return cli::Fail(config.status(), 2);
    return CheckDataSource(*config, args->json);
  };
}

FL_COMMAND("data",
           "check a data folder or source as the client reads it (data check DIR, data check "
           "--config FILE, data check --source KIND DIR); sync a PACS source's cache (data sync "
           "--config FILE)",
           SetUpData);

}  // namespace
}  // namespace fl
