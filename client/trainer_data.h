// Internal to the local trainer (client/trainer.cc), torch-free: the decoded-image cache, batch
// assembly with augmentation, the loader threads that prefetch batches while the current one
// trains, the per-epoch batch plan, and the store of private heads.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/dataset.h"
#include "client/trainer.h"
#include "common/env.h"
#include "common/tensor.h"

namespace fl {

enum class Split { kTrain = 0, kTest = 1 };

// Decoded images of one dataset per (split, sample index, size), shared by the loader threads.
// A sample that fails to decode is remembered and logged once to stderr (file and reason), and
// never retried. Thread-safe.
class ImageCache {
 public:
  using Pixels = std::shared_ptr<const std::vector<float>>;

  explicit ImageCache(ImageLoader loader) : loader_(std::move(loader)) {}

  // The sample's size x size pixels, or nullptr when it cannot be decoded.
  Pixels Get(Split split, int index, const Sample& sample, int size);
  // True when the sample already failed to decode at this size.
  bool KnownBad(Split split, int index, int size) const;
  // Samples that failed to decode so far.
  int failures() const;

 private:
  using Key = std::tuple<int, int, int>;
  absl::StatusOr<std::vector<float>> Decode(const Sample& sample, int size) const;

  const ImageLoader loader_;
  mutable absl::Mutex mu_;
  std::map<Key, Pixels> images_ ABSL_GUARDED_BY(mu_);  // nullptr: known undecodable
  int failures_ ABSL_GUARDED_BY(mu_) = 0;
};

// One batch assembled on the host.
struct HostBatch {
  absl::Status status;         // not OK when assembling the batch failed
  int64_t n = 0;               // samples that decoded
  std::vector<float> pixels;   // n x size x size
  std::vector<float> targets;  // n x columns.size(); NaN where unknown or not trained
  int64_t known_targets = 0;   // non-NaN entries of `targets`
};

// The decodable samples of `indices` (undecodable ones are left out). Target k of a sample is
// its value in dataset column columns[k], or NaN where columns[k] < 0. With an augment_seed each
// image is shifted and brightness-jittered (see Augment), deterministically from the seed and the
// sample (its path), not from its place in the batch: the same step augments an image alike
// whichever batch or process (a shard of the site's data) it falls in.
HostBatch AssembleBatch(ImageCache& cache, Split split, const std::vector<Sample>& samples,
                        const std::vector<int>& indices, int size, const std::vector<int>& columns,
                        std::optional<uint64_t> augment_seed);

// Shifts `image` (size x size) by up to 4 pixels each way, filling with zero, and jitters its
// brightness (gain 0.9-1.1, offset +-0.05, clamped to [0, 1]).
void Augment(std::vector<float>& image, int size, std::mt19937_64& rng);

// `steps` batches of `batch` indices drawn from `usable` without replacement within an epoch;
// each epoch is a fresh shuffle (an epoch's remainder too short for a batch is dropped).
// REQUIRES: 0 < batch <= usable.size().
std::vector<std::vector<int>> PlanTrainBatches(std::vector<int> usable, int batch, int steps,
                                               uint64_t seed);

// Calls `load` for batches 0..count-1 on `threads` threads, at most `capacity` batches ahead of
// the consumer, so decoding runs in parallel with training. The destructor stops and joins the
// threads (batches not yet taken are dropped).
class BatchPrefetcher {
 public:
  BatchPrefetcher(int count, std::function<HostBatch(int)> load, int threads, int capacity);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  // Batch 0, then 1, ... (waiting for it). An exception thrown by `load` comes back as the
  // batch's status. REQUIRES: called at most `count` times, from one thread.
  HostBatch Next();

 private:
  bool NextReady() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CanLoad() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run();

  const int count_;
  const int capacity_;
  const std::function<HostBatch(int)> load_;
  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;
  int consumed_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int, HostBatch> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;
};

// Private heads (HEAD_MODE_SITE) per job: in memory, and with a state_dir also in
// <state_dir>/heads/<job_id>.safetensors, so they survive a restart; files through `env`.
// Thread-safe.
class HeadStore {
 public:
  explicit HeadStore(std::string state_dir, Env* env = Env::Default())
      : state_dir_(std::move(state_dir)), env_(env) {}

  // The head kept for `job_id`, or nullopt when this site has none yet.
  absl::StatusOr<std::optional<TensorList>> Get(const std::string& job_id);
  // Keeps `head` for `job_id` (written to disk first, atomically, when there is a state_dir).
  absl::Status Put(const std::string& job_id, TensorList head);

 private:
  absl::StatusOr<std::string> PathFor(const std::string& job_id) const;

  const std::string state_dir_;
  Env* const env_;
  absl::Mutex mu_;
  std::map<std::string, TensorList> heads_ ABSL_GUARDED_BY(mu_);
};

// Test-split scores and known targets per job label, gathered batch by batch.
struct ScoreTable {
  explicit ScoreTable(size_t num_labels) : scores(num_labels), targets(num_labels) {}

  // Adds the model's probabilities for `batch`, a [rows, cols] row-major matrix that must be
  // [batch.n, number of job labels]. Unknown targets (NaN) are left out.
  absl::Status Add(const HostBatch& batch, const float* probs, int64_t rows, int64_t cols);
  // AUROC and counts of each of `labels` (job labels, in spec.labels()).
  std::vector<LabelMetric> Metrics(const JobSpec& spec,
                                   const std::vector<std::string>& labels) const;

  std::vector<std::vector<float>> scores, targets;
  int64_t images = 0;
};

}  // namespace fl
