#include "tools/data_check.h"

#include <cmath>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "client/data_source.h"
#include "client/pacs.h"
#include "common/proto_json.h"
#include "fl/report.pb.h"
#include "tools/cli.h"

namespace fl {
namespace {

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

}  // namespace

int CheckDataSource(const DataSourceConfig& config, bool json) {
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

int SyncDataSource(const DataSourceConfig& config, bool retry_rejected, bool verify) {
  if (!config.has_pacs()) {
    return cli::Fail(absl::InvalidArgumentError("the config names no pacs source: nothing to sync"),
                     2);
  }
  if (absl::Status valid = ValidatePacsSource(config.pacs()); !valid.ok()) {
    return cli::Fail(valid, 2);
  }
  PacsSyncOptions options;
  options.retry_rejected = retry_rejected;
  options.verify = verify;
  PacsSyncReport report;
  const absl::Status synced = SyncPacs(config.pacs(), options, &report);
  std::cout << DescribePacsSync(report) << "\n";
  if (!synced.ok()) return cli::Fail(synced, 1);
  if (report.studies == 0) {
    std::cout << "the query matched no studies (check source.pacs's filters)\n";
  }
  std::cout << "cache: " << config.pacs().cache_dir() << "\n";
  return 0;
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

}  // namespace fl
