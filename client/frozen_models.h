// The finished jobs' models that this site's jobs build on (a diffusion job's frozen
// autoencoder), kept in STATE_DIR/frozen/DIGEST.safetensors so that each is downloaded once,
// not every round; the one in use is also held in memory.
// Torch-free: the trainer gets them through TrainerOptions.frozen_models (Get).
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/trainer.h"
#include "common/env.h"
#include "fl/federation.pb.h"

namespace fl {

class FrozenModelCache {
 public:
  // Files go to `dir` (created when the first model is kept).
  explicit FrozenModelCache(std::string dir, Env* env = Env::Default());

  // Makes the frozen model that `task` names (Task.frozen_spec, Task.frozen_digest) available
  // to Get: from memory, else from the site's disk if the file there has that digest, else
  // through `download`. A download whose TensorDigest differs from the task's is refused
  // (DATA_LOSS) and not kept. A file that cannot be kept only costs a download next time.
  absl::Status Ensure(const Task& task,
                      const std::function<absl::StatusOr<TensorList>()>& download);

  // The model of job `job_id` as the last Ensure made it available; NOT_FOUND otherwise.
  absl::StatusOr<FrozenModel> Get(const std::string& job_id) const;

 private:
  // The model in `path` if it is there and has `digest`.
  absl::StatusOr<TensorList> ReadChecked(const std::string& path, const std::string& digest) const;

  const std::string dir_;
  Env* const env_;
  mutable absl::Mutex mu_;
  std::string job_ ABSL_GUARDED_BY(mu_);  // the job that trained the model in memory
  std::string digest_ ABSL_GUARDED_BY(mu_);
  FrozenModel model_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fl
