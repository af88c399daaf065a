#include "tools/evaluate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/dataset.h"
#include "client/dicom.h"
#include "client/trainer.h"
#include "common/proto_json.h"
#include "fl/federation.pb.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/features.h"
#include "models/model.h"
#include "tools/synth_eval.h"

namespace fl {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

absl::StatusOr<ModelSpec> SpecOf(const ModelSidecar& sidecar) {
  return ClassifierSpec(sidecar.architecture, sidecar.in_channels > 0 ? sidecar.in_channels : 1,
                        sidecar.input_size, static_cast<int>(sidecar.labels.size()));
}

// The model of the sidecar with the weights of the file, in eval mode on the CPU.
absl::StatusOr<std::shared_ptr<ModelImpl>> LoadModel(const std::string& model_path,
                                                     const ModelSidecar& sidecar,
                                                     const std::string& sidecar_path) {
  if (sidecar.head_mode == "site") {
    return absl::FailedPreconditionError(
        absl::StrCat(sidecar_path,
                     ": head_mode \"site\": the global model carries no trained "
                     "head (each site keeps its own); evaluate a label-mode job"));
  }
  ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(model_path));
  ASSIGN_OR_RETURN(ModelSpec spec, SpecOf(sidecar));
  absl::StatusOr<std::shared_ptr<ModelImpl>> model = CreateModel(spec, /*seed=*/0);
  if (!model.ok()) return Annotate(model.status(), sidecar_path);
  absl::Status loaded = LoadWeights(**model, weights);
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        sidecar_path, " does not match ", model_path, " (", sidecar.architecture, ", ",
        sidecar.labels.size(), " labels, input ", sidecar.input_size, "): ", loaded.message()));
  }
  (*model)->eval();
  return *model;
}

// Per model label, the CSV column it reads, or -1; an error when none matches.
absl::StatusOr<std::vector<int>> MapColumns(const std::vector<std::string>& model_labels,
                                            const std::vector<std::string>& columns) {
  std::vector<int> map(model_labels.size(), -1);
  bool any = false;
  for (size_t j = 0; j < model_labels.size(); ++j) {
    auto it = std::find(columns.begin(), columns.end(), model_labels[j]);
    if (it == columns.end()) continue;
    map[j] = static_cast<int>(it - columns.begin());
    any = true;
  }
  if (!any) {
    return absl::InvalidArgumentError(
        absl::StrCat("none of the model's labels [", absl::StrJoin(model_labels, ", "),
                     "] is a column of the labels CSV [", absl::StrJoin(columns, ", "), "]"));
  }
  return map;
}

// Decodes samples [begin, end) on `threads` threads; nullopt where a file does not decode.
std::vector<std::optional<std::vector<float>>> DecodeRange(const std::vector<Sample>& samples,
                                                           size_t begin, size_t end, int size,
                                                           int threads) {
  std::vector<std::optional<std::vector<float>>> out(end - begin);
  std::atomic<size_t> next{begin};
  auto work = [&] {
    for (size_t i = next++; i < end; i = next++) {
      absl::StatusOr<DicomImage> image = DecodeDicom(samples[i].path, size);
      if (image.ok()) {
        out[i - begin] = std::move(image->pixels);
      } else {
        std::cerr << "evaluate: skipping " << samples[i].path << ": " << image.status().message()
                  << "\n";
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return out;
}

// Sigmoid outputs [n, labels] of the model for n images of size x size.
absl::StatusOr<std::vector<float>> Infer(ModelImpl& model, std::vector<float>& pixels, int64_t n,
                                         int size, int channels) {
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor images = torch::from_blob(pixels.data(), {n, 1, size, size}, torch::kFloat32);
    if (channels > 1) images = images.expand({n, channels, size, size}).contiguous();
    torch::Tensor probs = torch::sigmoid(model.forward(images)).contiguous();
    return std::vector<float>(probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("inference failed: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("inference failed: ", e.what()));
  }
}

struct EvalContext {
  ModelImpl* model;
  const ModelSidecar* sidecar;
  std::vector<int> columns;  // per evaluated label, its CSV column
  std::vector<int> outputs;  // per evaluated label, its model output
};

// Predictions for samples [begin, end); undecodable ones are counted in `skipped`.
absl::Status PredictBatch(const EvalContext& ctx, const std::vector<Sample>& samples, size_t begin,
                          size_t end, int threads, std::vector<Prediction>& out, int64_t& skipped) {
  const int size = ctx.sidecar->input_size;
  auto images = DecodeRange(samples, begin, end, size, threads);
  std::vector<float> pixels;
  std::vector<const Sample*> kept;
  for (size_t i = 0; i < images.size(); ++i) {
    if (!images[i]) {
      ++skipped;
      continue;
    }
    pixels.insert(pixels.end(), images[i]->begin(), images[i]->end());
    kept.push_back(&samples[begin + i]);
  }
  if (kept.empty()) return absl::OkStatus();
  const int64_t n = static_cast<int64_t>(kept.size());
  const size_t num_outputs = ctx.sidecar->labels.size();
  ASSIGN_OR_RETURN(std::vector<float> probs,
                   Infer(*ctx.model, pixels, n, size, std::max(1, ctx.sidecar->in_channels)));
  for (int64_t i = 0; i < n; ++i) {
    Prediction& p = out.emplace_back();
    p.key = kept[i]->sop_instance_uid;
    p.patient_id = kept[i]->patient_id;
    p.sex = kept[i]->sex;
    p.age_years = kept[i]->age_years;
    for (size_t k = 0; k < ctx.columns.size(); ++k) {
      p.probs.push_back(probs[i * num_outputs + ctx.outputs[k]]);
      p.targets.push_back(kept[i]->labels[ctx.columns[k]]);
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateOptions(const EvaluateOptions& o) {
  if (!(o.threshold >= 0 && o.threshold < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("threshold ", o.threshold, " is not in (0, 1)"));
  }
  if (o.split != "all" && o.split != "test" && o.split != "train") {
    return absl::InvalidArgumentError(
        absl::StrCat("split \"", o.split, "\" is not \"all\", \"test\" or \"train\""));
  }
  if (o.batch_size < 1 || o.threads < 1) {
    return absl::InvalidArgumentError("batch size and threads must be >= 1");
  }
  if (!std::is_sorted(o.age_edges.begin(), o.age_edges.end()) ||
      std::adjacent_find(o.age_edges.begin(), o.age_edges.end()) != o.age_edges.end()) {
    return absl::InvalidArgumentError("age band edges must be strictly ascending");
  }
  if (!std::filesystem::is_regular_file(o.model_path)) {
    return absl::NotFoundError(absl::StrCat("model file ", o.model_path, " not found"));
  }
  return absl::OkStatus();
}

// The samples of the chosen split, read as the client reads its folder.
absl::StatusOr<std::vector<Sample>> ReadSamples(const EvaluateOptions& o, Dataset& data) {
  const double fraction = o.split == "all" ? 1.0 : o.test_fraction;
  ASSIGN_OR_RETURN(data, LoadDataset(o.data_dir, o.labels_csv, fraction));
  std::vector<Sample> samples = o.split == "train" ? data.train : data.test;
  if (samples.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no labelled DICOM image in ", o.data_dir, " (split ", o.split, "; ", data.skipped_files,
        " unreadable, ", data.unlabelled_files, " without a row in ", o.labels_csv, ")"));
  }
  return samples;
}

}  // namespace

std::string SidecarPathFor(const std::string& model_path) {
  std::filesystem::path p(model_path);
  return p.replace_extension(".json").string();
}

absl::StatusOr<ModelSidecar> ReadModelSidecar(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("model sidecar ", path, " cannot be read"));
  std::stringstream text;
  text << in.rdbuf();
  ModelCard card;
  RETURN_IF_ERROR(FromJson(text.str(), path, &card));
  if (!card.workload().empty() && card.workload() != "classification") {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": a model of the '", card.workload(),
                     "' workload; flctl evaluate evaluates classifiers"));
  }
  const auto missing = [&](const char* field, const char* what) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field \"", field, "\" is missing or not ", what));
  };
  if (card.architecture().empty()) return missing("architecture", "a string");
  if (card.labels().empty()) return missing("labels", "a non-empty list");
  for (const std::string& label : card.labels()) {
    if (label.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": an empty label"));
  }
  if (card.input_size() == 0 || card.input_size() > 1000000) {
    return missing("input_size", "an integer in range");
  }
  if (card.in_channels() > 1000000) return missing("in_channels", "an integer in range");
  ModelSidecar s;
  s.architecture = card.architecture();
  s.labels.assign(card.labels().begin(), card.labels().end());
  s.input_size = static_cast<int>(card.input_size());
  s.in_channels = card.in_channels() > 0 ? static_cast<int>(card.in_channels()) : 1;
  if (!card.head_mode().empty()) s.head_mode = card.head_mode();
  return s;
}

absl::StatusOr<TensorList> InitialWeights(const ModelSidecar& sidecar, uint64_t seed) {
  ASSIGN_OR_RETURN(ModelSpec spec, SpecOf(sidecar));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(spec, seed));
  try {
    return ExtractWeights(*model);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("extracting weights: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<EvaluationReport> EvaluateModel(const EvaluateOptions& o,
                                               std::vector<Prediction>* predictions_out) {
  RETURN_IF_ERROR(ValidateOptions(o));
  const std::string sidecar_path =
      o.sidecar_path.empty() ? SidecarPathFor(o.model_path) : o.sidecar_path;
  ASSIGN_OR_RETURN(ModelSidecar sidecar, ReadModelSidecar(sidecar_path));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model,
                   LoadModel(o.model_path, sidecar, sidecar_path));
  Dataset data;
  ASSIGN_OR_RETURN(std::vector<Sample> samples, ReadSamples(o, data));
  ASSIGN_OR_RETURN(std::vector<int> map, MapColumns(sidecar.labels, data.label_names));
  EvalContext ctx{model.get(), &sidecar, {}, {}};
  std::vector<std::string> names;
  for (size_t j = 0; j < map.size(); ++j) {
    if (map[j] < 0) continue;
    ctx.columns.push_back(map[j]);
    ctx.outputs.push_back(static_cast<int>(j));
    names.push_back(sidecar.labels[j]);
  }
  std::vector<Prediction> predictions;
  int64_t skipped = data.skipped_files + data.unlabelled_files;
  for (size_t b = 0; b < samples.size(); b += o.batch_size) {
    const size_t e = std::min(samples.size(), b + static_cast<size_t>(o.batch_size));
    RETURN_IF_ERROR(PredictBatch(ctx, samples, b, e, o.threads, predictions, skipped));
  }
  if (predictions.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("none of the ", samples.size(), " images in ", o.data_dir, " decodes"));
  }
  EvaluationReport report = Summarize(names, predictions, o.threshold, o.age_edges);
  report.skipped_files = skipped;
  if (predictions_out != nullptr) *predictions_out = std::move(predictions);
  return report;
}

}  // namespace fl

namespace fl {
namespace {

// Accuracy of `members` of `predictions` as GroupResult::accuracy defines it.
double GroupAccuracy(const std::vector<Prediction>& predictions, const std::vector<size_t>& members,
                     size_t num_labels, const std::vector<double>& threshold) {
  double sum = 0;
  int labels = 0;
  for (size_t k = 0; k < num_labels; ++k) {
    int64_t known = 0, right = 0;
    for (size_t i : members) {
      const float t = predictions[i].targets[k];
      if (std::isnan(t)) continue;
      ++known;
      if ((predictions[i].probs[k] >= threshold[k]) == (t > 0.5f)) ++right;
    }
    if (known == 0) continue;
    sum += static_cast<double>(right) / known;
    ++labels;
  }
  return labels > 0 ? sum / labels : kNaN;
}

// Fills GroupResult::spd of groups[first, end) (one attribute) from their n and accuracy.
void FillSpd(std::vector<GroupResult>& groups, size_t first) {
  for (size_t g = first; g < groups.size(); ++g) {
    double weighted = 0, weight = 0;
    for (size_t h = first; h < groups.size(); ++h) {
      if (h == g || std::isnan(groups[h].accuracy)) continue;
      weighted += groups[h].n * groups[h].accuracy;
      weight += groups[h].n;
    }
    groups[g].spd = weight > 0 ? groups[g].accuracy - weighted / weight : kNaN;
  }
}

// Appends one GroupResult per group of an attribute; `group_of` maps a prediction to its group
// index in `names` or -1 (unknown: in no group).
void AddAttribute(const std::string& attribute, const std::vector<std::string>& names,
                  const std::function<int(const Prediction&)>& group_of,
                  const std::vector<Prediction>& predictions, size_t num_labels,
                  const std::vector<double>& threshold, std::vector<GroupResult>& out) {
  std::vector<std::vector<size_t>> members(names.size());
  for (size_t i = 0; i < predictions.size(); ++i) {
    const int g = group_of(predictions[i]);
    if (g >= 0) members[g].push_back(i);
  }
  const size_t first = out.size();
  for (size_t g = 0; g < names.size(); ++g) {
    out.push_back({attribute, names[g], static_cast<int64_t>(members[g].size()),
                   GroupAccuracy(predictions, members[g], num_labels, threshold), kNaN});
  }
  FillSpd(out, first);
}

// Per label, the score above which as many images are called positive as the label has
// positives among the known targets (0.5 when a label has no known target).
std::vector<double> PrevalenceThresholds(const std::vector<Prediction>& predictions,
                                         size_t num_labels) {
  std::vector<double> out(num_labels, 0.5);
  for (size_t k = 0; k < num_labels; ++k) {
    std::vector<float> scores;
    size_t positives = 0;
    for (const Prediction& p : predictions) {
      if (std::isnan(p.targets[k])) continue;
      scores.push_back(p.probs[k]);
      positives += p.targets[k] > 0.5f;
    }
    if (scores.empty()) continue;
    std::sort(scores.begin(), scores.end(), std::greater<float>());
    out[k] = positives == 0 ? std::nextafter(scores.front(), 2.0f) : scores[positives - 1];
  }
  return out;
}

}  // namespace

std::vector<std::string> AgeBandNames(const std::vector<int>& edges) {
  if (edges.empty()) return {"all"};
  std::vector<std::string> names = {absl::StrCat("<", edges.front())};
  for (size_t i = 0; i + 1 < edges.size(); ++i) {
    names.push_back(absl::StrCat(edges[i], "-", edges[i + 1] - 1));
  }
  names.push_back(absl::StrCat(edges.back(), "+"));
  return names;
}

int AgeBand(int age_years, const std::vector<int>& edges) {
  if (age_years < 0) return -1;
  return static_cast<int>(std::upper_bound(edges.begin(), edges.end(), age_years) - edges.begin());
}

EvaluationReport Summarize(const std::vector<std::string>& label_names,
                           const std::vector<Prediction>& predictions, double threshold,
                           const std::vector<int>& age_edges) {
  EvaluationReport report;
  report.images = static_cast<int64_t>(predictions.size());
  report.threshold = threshold;
  double auroc_sum = 0;
  int defined = 0;
  for (size_t k = 0; k < label_names.size(); ++k) {
    LabelResult& r = report.labels.emplace_back();
    r.label = label_names[k];
    std::vector<float> scores, targets;
    for (const Prediction& p : predictions) {
      if (std::isnan(p.targets[k])) continue;
      scores.push_back(p.probs[k]);
      targets.push_back(p.targets[k]);
      (p.targets[k] > 0.5f ? r.positives : r.negatives)++;
    }
    r.auroc = Auroc(scores, targets);
    if (!std::isnan(r.auroc)) auroc_sum += r.auroc, ++defined;
  }
  report.mean_auroc = defined > 0 ? auroc_sum / defined : kNaN;
  std::vector<size_t> all(predictions.size());
  std::iota(all.begin(), all.end(), size_t{0});
  const std::vector<double> thresholds =
      threshold > 0 ? std::vector<double>(label_names.size(), threshold)
                    : PrevalenceThresholds(predictions, label_names.size());
  report.accuracy = GroupAccuracy(predictions, all, label_names.size(), thresholds);
  auto sex = [](const Prediction& p) { return p.sex == "M" ? 0 : p.sex == "F" ? 1 : -1; };
  AddAttribute("sex", {"M", "F"}, sex, predictions, label_names.size(), thresholds, report.groups);
  auto age = [&](const Prediction& p) { return AgeBand(p.age_years, age_edges); };
  AddAttribute("age", AgeBandNames(age_edges), age, predictions, label_names.size(), thresholds,
               report.groups);
  return report;
}

// The features of one set of images under `model`.
absl::StatusOr<FeatureMatrix> FeaturesOf(ModelImpl& model, const FeatureMatrix& images,
                                         int64_t side, int64_t channels) {
  if (images.cols != side * side) {
    return absl::InvalidArgumentError(
        absl::StrCat("images of ", images.cols, " pixels for a ", side, " x ", side, " px model"));
  }
  FeatureMatrix out;
  out.rows = images.rows;
  try {
    torch::NoGradGuard no_grad;
    constexpr int64_t kBatch = 64;
    for (int64_t begin = 0; begin < images.rows; begin += kBatch) {
      const int64_t n = std::min(kBatch, images.rows - begin);
      torch::Tensor batch =
          torch::from_blob(const_cast<float*>(images.data.data()) + begin * images.cols,
                           {n, 1, side, side}, torch::kFloat32)
              .expand({n, channels, side, side})
              .contiguous();
      ASSIGN_OR_RETURN(torch::Tensor features, ClassifierFeatures(model, batch));
      features = features.to(torch::kFloat32).contiguous();
      out.cols = features.size(1);
      out.data.insert(out.data.end(), features.data_ptr<float>(),
                      features.data_ptr<float>() + features.numel());
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("features: ", e.what_without_backtrace()));
  }
  return out;
}

absl::StatusOr<std::vector<FeatureMatrix>> ClassifierFeaturesOf(
    const std::string& model_path, const std::vector<const FeatureMatrix*>& sets) {
  const std::string sidecar_path = SidecarPathFor(model_path);
  ASSIGN_OR_RETURN(ModelSidecar sidecar, ReadModelSidecar(sidecar_path));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, LoadModel(model_path, sidecar, sidecar_path));
  std::vector<FeatureMatrix> out;
  for (const FeatureMatrix* images : sets) {
    ASSIGN_OR_RETURN(FeatureMatrix features, FeaturesOf(*model, *images, sidecar.input_size,
                                                        std::max(1, sidecar.in_channels)));
    out.push_back(std::move(features));
  }
  return out;
}

}  // namespace fl
