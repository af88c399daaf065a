// The evaluation report's renderings (JSON, text, per-image scores): torch-free, in fl_tools.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "fl/report.pb.h"
#include "google/protobuf/util/json_util.h"
#include "tools/evaluate.h"

namespace fl {
namespace {

std::string Num(double v) { return std::isnan(v) ? "null" : absl::StrFormat("%.6g", v); }

// Sets an optional double field unless `v` is NaN (undefined values stay absent).
template <typename Message, typename Setter>
void SetDefined(Message& m, Setter set, double v) {
  if (!std::isnan(v)) (m.*set)(v);
}

EvaluationReportJson ToProto(const EvaluationReport& r) {
  EvaluationReportJson out;
  out.set_images(static_cast<uint32_t>(r.images));
  out.set_skipped_files(static_cast<uint32_t>(r.skipped_files));
  out.set_threshold(r.threshold);
  SetDefined(out, &EvaluationReportJson::set_mean_auroc, r.mean_auroc);
  SetDefined(out, &EvaluationReportJson::set_accuracy, r.accuracy);
  for (const LabelResult& l : r.labels) {
    EvaluationReportJson::Label* m = out.add_labels();
    m->set_label(l.label);
    SetDefined(*m, &EvaluationReportJson::Label::set_auroc, l.auroc);
    m->set_positives(static_cast<uint32_t>(l.positives));
    m->set_negatives(static_cast<uint32_t>(l.negatives));
  }
  for (const GroupResult& g : r.groups) {
    EvaluationReportJson::Group* m = out.add_groups();
    m->set_attribute(g.attribute);
    m->set_group(g.group);
    m->set_n(static_cast<uint32_t>(g.n));
    SetDefined(*m, &EvaluationReportJson::Group::set_accuracy, g.accuracy);
    SetDefined(*m, &EvaluationReportJson::Group::set_spd, g.spd);
  }
  return out;
}

// A CSV field: quoted when it holds a comma, quote or line break.
std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos) return text;
  std::string out = "\"";
  for (char c : text) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

std::string ReportJson(const EvaluationReport& report) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;  // a zero count is printed, not left out
  options.preserve_proto_field_names = true;
  std::string json;
  // Printing a message with no Any or map fields cannot fail.
  (void)google::protobuf::util::MessageToJsonString(ToProto(report), &json, options);
  return json;
}

std::string ScoresCsv(const std::vector<std::string>& label_names,
                      const std::vector<Prediction>& predictions) {
  std::string out = "key,patient_id,sex,age";
  for (const std::string& label : label_names) {
    absl::StrAppend(&out, ",", CsvField(label + "_score"), ",", CsvField(label + "_target"));
  }
  out += "\n";
  for (const Prediction& p : predictions) {
    absl::StrAppend(&out, CsvField(p.key), ",", CsvField(p.patient_id), ",", CsvField(p.sex), ",",
                    p.age_years >= 0 ? absl::StrCat(p.age_years) : "");
    for (size_t k = 0; k < label_names.size(); ++k) {
      const float t = p.targets[k];
      absl::StrAppendFormat(&out, ",%.9g,%s", p.probs[k],
                            std::isnan(t) ? "" : (t > 0.5f ? "1" : "0"));
    }
    out += "\n";
  }
  return out;
}

std::string ReportText(const EvaluationReport& r) {
  std::string out = absl::StrFormat("%d images (%d files skipped), threshold %g\n\n", r.images,
                                    r.skipped_files, r.threshold);
  absl::StrAppendFormat(&out, "%-24s %8s %9s %9s\n", "label", "AUROC", "positive", "negative");
  for (const LabelResult& l : r.labels) {
    absl::StrAppendFormat(&out, "%-24s %8s %9d %9d\n", l.label, Num(l.auroc), l.positives,
                          l.negatives);
  }
  absl::StrAppendFormat(&out, "%-24s %8s\n%-24s %8s\n\n", "mean AUROC", Num(r.mean_auroc),
                        "accuracy", Num(r.accuracy));
  absl::StrAppendFormat(&out, "%-10s %-8s %7s %9s %9s\n", "attribute", "group", "n", "accuracy",
                        "SPD");
  for (const GroupResult& g : r.groups) {
    absl::StrAppendFormat(&out, "%-10s %-8s %7d %9s %9s\n", g.attribute, g.group, g.n,
                          Num(g.accuracy), Num(g.spd));
  }
  return out;
}

}  // namespace fl
