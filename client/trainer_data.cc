#include "client/trainer_data.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr int kMaxShiftPixels = 4;

}  // namespace

ImageCache::Pixels ImageCache::Get(Split split, int index, const Sample& sample, int size) {
  const Key key{static_cast<int>(split), index, size};
  {
    absl::MutexLock lock(&mu_);
    auto it = images_.find(key);
    if (it != images_.end()) return it->second;
  }
  absl::StatusOr<std::vector<float>> decoded = Decode(sample, size);
  Pixels pixels;
  if (decoded.ok()) pixels = std::make_shared<const std::vector<float>>(*std::move(decoded));
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = images_.emplace(key, pixels);
  if (inserted && pixels == nullptr) {
    ++failures_;
    std::fprintf(stderr, "trainer: skipping sample %s: %s\n", sample.path.c_str(),
                 decoded.status().ToString().c_str());
  }
  return it->second;
}

bool ImageCache::KnownBad(Split split, int index, int size) const {
  absl::MutexLock lock(&mu_);
  auto it = images_.find(Key{static_cast<int>(split), index, size});
  return it != images_.end() && it->second == nullptr;
}

int ImageCache::failures() const {
  absl::MutexLock lock(&mu_);
  return failures_;
}

absl::StatusOr<std::vector<float>> ImageCache::Decode(const Sample& sample, int size) const {
  absl::StatusOr<std::vector<float>> pixels;
  try {
    pixels = loader_(sample, size);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("image loader threw: ", e.what()));
  }
  if (!pixels.ok()) return pixels.status();
  if (pixels->size() != static_cast<size_t>(size) * size) {
    return absl::DataLossError(
        absl::StrCat("decoded ", pixels->size(), " pixels, expected ", size, "x", size));
  }
  return pixels;
}

HostBatch AssembleBatch(ImageCache& cache, Split split, const std::vector<Sample>& samples,
                        const std::vector<int>& indices, int size, const std::vector<int>& columns,
                        std::optional<uint64_t> augment_seed) {
  HostBatch batch;
  batch.pixels.reserve(indices.size() * size * size);
  batch.targets.reserve(indices.size() * columns.size());
  for (int i : indices) {
    ImageCache::Pixels image = cache.Get(split, i, samples[i], size);
    if (image == nullptr) continue;
    if (augment_seed.has_value()) {
      std::vector<float> augmented = *image;
      std::mt19937_64 rng(*augment_seed ^ (StableHash64(samples[i].path) * 0x9E3779B97F4A7C15ull));
      Augment(augmented, size, rng);
      batch.pixels.insert(batch.pixels.end(), augmented.begin(), augmented.end());
    } else {
      batch.pixels.insert(batch.pixels.end(), image->begin(), image->end());
    }
    for (int column : columns) {
      const float target =
          column >= 0 ? samples[i].labels[column] : std::numeric_limits<float>::quiet_NaN();
      batch.targets.push_back(target);
      if (!std::isnan(target)) ++batch.known_targets;
    }
    ++batch.n;
  }
  return batch;
}

void Augment(std::vector<float>& image, int size, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> shift(-kMaxShiftPixels, kMaxShiftPixels);
  std::uniform_real_distribution<float> gain(0.9f, 1.1f), offset(-0.05f, 0.05f);
  const int dx = shift(rng), dy = shift(rng);
  const float g = gain(rng), o = offset(rng);
  std::vector<float> out(image.size(), 0.0f);
  for (int y = 0; y < size; ++y) {
    const int sy = y - dy;
    for (int x = 0; x < size; ++x) {
      const int sx = x - dx;
      const float v = (sy >= 0 && sy < size && sx >= 0 && sx < size) ? image[sy * size + sx] : 0;
      out[y * size + x] = std::clamp(v * g + o, 0.0f, 1.0f);
    }
  }
  image = std::move(out);
}

std::vector<std::vector<int>> PlanTrainBatches(std::vector<int> usable, int batch, int steps,
                                               uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int>> plan;
  size_t pos = usable.size();
  for (int s = 0; s < steps; ++s) {
    if (pos + batch > usable.size()) {
      std::shuffle(usable.begin(), usable.end(), rng);
      pos = 0;
    }
    plan.emplace_back(usable.begin() + pos, usable.begin() + pos + batch);
    pos += batch;
  }
  return plan;
}

BatchPrefetcher::BatchPrefetcher(int count, std::function<HostBatch(int)> load, int threads,
                                 int capacity)
    : count_(count), capacity_(std::max(1, capacity)), load_(std::move(load)) {
  for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { Run(); });
}

BatchPrefetcher::~BatchPrefetcher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : workers_) t.join();
}

HostBatch BatchPrefetcher::Next() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &BatchPrefetcher::NextReady));
  HostBatch batch = std::move(ready_[consumed_]);
  ready_.erase(consumed_++);
  return batch;
}

bool BatchPrefetcher::NextReady() const { return ready_.count(consumed_) > 0; }

bool BatchPrefetcher::CanLoad() const {
  return stop_ || next_ >= count_ || next_ - consumed_ < capacity_;
}

void BatchPrefetcher::Run() {
  for (;;) {
    int k;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &BatchPrefetcher::CanLoad));
      if (stop_ || next_ >= count_) return;
      k = next_++;
    }
    HostBatch batch;
    try {
      batch = load_(k);
    } catch (const std::exception& e) {
      batch.status = absl::InternalError(absl::StrCat("assembling batch ", k, ": ", e.what()));
    }
    absl::MutexLock lock(&mu_);
    ready_[k] = std::move(batch);
  }
}

absl::StatusOr<std::optional<TensorList>> HeadStore::Get(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = heads_.find(job_id);
  if (it != heads_.end()) return std::optional<TensorList>(it->second);
  if (state_dir_.empty()) return std::optional<TensorList>();
  ASSIGN_OR_RETURN(std::string path, PathFor(job_id));
  if (!env_->FileExists(path)) return std::optional<TensorList>();
  ASSIGN_OR_RETURN(TensorList head, ReadSafetensors(path, nullptr, env_));
  heads_[job_id] = head;
  return std::optional<TensorList>(std::move(head));
}

absl::Status HeadStore::Put(const std::string& job_id, TensorList head) {
  absl::MutexLock lock(&mu_);
  if (!state_dir_.empty()) {
    ASSIGN_OR_RETURN(std::string path, PathFor(job_id));
    RETURN_IF_ERROR(Annotate(MakeDirs(ParentDir(path), 0700, env_), "saving the private head"));
    RETURN_IF_ERROR(Annotate(WriteSafetensors(path, head, {{"job_id", job_id}}, env_),
                             "saving the private head"));
  }
  heads_[job_id] = std::move(head);
  return absl::OkStatus();
}

absl::StatusOr<std::string> HeadStore::PathFor(const std::string& job_id) const {
  const bool safe = !job_id.empty() && job_id[0] != '.' &&
                    std::all_of(job_id.begin(), job_id.end(), [](unsigned char c) {
                      return std::isalnum(c) || c == '-' || c == '_' || c == '.';
                    });
  if (!safe) {
    return absl::InvalidArgumentError(
        absl::StrCat("job id \"", job_id, "\" cannot name a head file"));
  }
  return absl::StrCat(state_dir_, "/heads/", job_id, ".safetensors");
}

absl::Status ScoreTable::Add(const HostBatch& batch, const float* probs, int64_t rows,
                             int64_t cols) {
  const int64_t num_labels = static_cast<int64_t>(scores.size());
  if (rows != batch.n || cols != num_labels) {
    return absl::InternalError(absl::StrCat("model output is [", rows, ", ", cols, "], not [",
                                            batch.n, ", ", num_labels, "]"));
  }
  for (int64_t i = 0; i < batch.n * num_labels; ++i) {
    const float t = batch.targets[i];
    if (std::isnan(t)) continue;
    scores[i % num_labels].push_back(probs[i]);
    targets[i % num_labels].push_back(t);
  }
  images += batch.n;
  return absl::OkStatus();
}

std::vector<LabelMetric> ScoreTable::Metrics(const JobSpec& spec,
                                             const std::vector<std::string>& labels) const {
  std::vector<LabelMetric> metrics;
  for (const std::string& label : labels) {
    const size_t j =
        std::find(spec.labels().begin(), spec.labels().end(), label) - spec.labels().begin();
    LabelMetric& m = metrics.emplace_back();
    m.set_label(label);
    m.set_auroc(Auroc(scores[j], targets[j]));
    const auto positives =
        std::count_if(targets[j].begin(), targets[j].end(), [](float t) { return t > 0.5f; });
    m.set_positives(positives);
    m.set_negatives(targets[j].size() - positives);
    for (const RocPoint& point : RocCurve(scores[j], targets[j])) *m.add_roc() = point;
  }
  return metrics;
}

std::vector<RocPoint> RocCurve(const std::vector<float>& scores, const std::vector<float>& targets,
                               int max_points) {
  std::vector<std::pair<float, bool>> items;  // (score, positive)
  for (size_t i = 0; i < scores.size() && i < targets.size(); ++i) {
    if (std::isnan(targets[i]) || std::isnan(scores[i])) continue;
    items.emplace_back(scores[i], targets[i] > 0.5f);
  }
  const int64_t positives =
      std::count_if(items.begin(), items.end(), [](const auto& item) { return item.second; });
  const int64_t negatives = static_cast<int64_t>(items.size()) - positives;
  if (positives == 0 || negatives == 0 || max_points < 2) return {};
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  const int64_t n = static_cast<int64_t>(items.size());
  const int64_t step = (n + max_points - 2) / (max_points - 1);  // images per step, rounded up
  auto point = [&](int64_t tp, int64_t fp) {
    RocPoint p;
    p.set_fpr(static_cast<double>(fp) / negatives);
    p.set_tpr(static_cast<double>(tp) / positives);
    return p;
  };
  std::vector<RocPoint> curve{point(0, 0)};
  int64_t tp = 0, fp = 0, since = 0;
  for (size_t i = 0; i < items.size();) {
    size_t k = i;  // a run of tied scores passes the threshold together
    for (; k < items.size() && items[k].first == items[i].first; ++k) {
      items[k].second ? ++tp : ++fp;
    }
    since += static_cast<int64_t>(k - i);
    i = k;
    if (since >= step && i < items.size()) {
      curve.push_back(point(tp, fp));
      since = 0;
    }
  }
  curve.push_back(point(tp, fp));  // (1, 1)
  return curve;
}

double Auroc(const std::vector<float>& scores, const std::vector<float>& targets) {
  const double kNaN = std::numeric_limits<double>::quiet_NaN();
  if (scores.size() != targets.size()) return kNaN;
  std::vector<std::pair<float, bool>> items;  // (score, positive)
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(targets[i]) || std::isnan(scores[i])) continue;
    items.emplace_back(scores[i], targets[i] > 0.5f);
  }
  std::sort(items.begin(), items.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  // Mann-Whitney U: sum of the positives' ranks, tied scores sharing their mean rank.
  double positive_rank_sum = 0;
  int64_t positives = 0;
  for (size_t i = 0; i < items.size();) {
    size_t j = i;
    while (j < items.size() && items[j].first == items[i].first) ++j;
    const double mean_rank = (static_cast<double>(i + 1) + static_cast<double>(j)) / 2;
    for (size_t k = i; k < j; ++k) {
      if (items[k].second) {
        positive_rank_sum += mean_rank;
        ++positives;
      }
    }
    i = j;
  }
  const int64_t negatives = static_cast<int64_t>(items.size()) - positives;
  if (positives == 0 || negatives == 0) return kNaN;
  const double u = positive_rank_sum - static_cast<double>(positives) * (positives + 1) / 2;
  return u / (static_cast<double>(positives) * static_cast<double>(negatives));
}
}  // namespace fl
