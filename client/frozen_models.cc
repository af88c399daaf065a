#include "client/frozen_models.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/digest.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fl {
namespace {

bool IsDigest(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!absl::ascii_isxdigit(c) || absl::ascii_isupper(c)) return false;
  }
  return true;
}

}  // namespace

FrozenModelCache::FrozenModelCache(std::string dir, Env* env) : dir_(std::move(dir)), env_(env) {}

absl::StatusOr<TensorList> FrozenModelCache::ReadChecked(const std::string& path,
                                                         const std::string& digest) const {
  if (!env_->FileExists(path)) return absl::NotFoundError(path);
  ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(path, nullptr, env_));
  if (TensorDigest(weights) != digest) {
    return absl::DataLossError(absl::StrCat(path, " does not have digest ", digest));
  }
  return weights;
}

absl::Status FrozenModelCache::Ensure(const Task& task,
                                      const std::function<absl::StatusOr<TensorList>()>& download) {
  const std::string& job = task.spec().diffusion().autoencoder_job();
  const std::string& digest = task.frozen_digest();
  if (!IsDigest(digest)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the task's frozen_digest '", digest, "' is not a SHA-256 in hex"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (job_ == job && digest_ == digest) return absl::OkStatus();
  }
  const std::string path = absl::StrCat(dir_, "/", digest, ".safetensors");
  absl::StatusOr<TensorList> weights = ReadChecked(path, digest);
  if (!weights.ok()) {
    if (!absl::IsNotFound(weights.status())) {
      LogLine("fl-client", absl::StrCat("the kept frozen model is unusable (",
                                        weights.status().message(), "); downloading it again"));
    }
    ASSIGN_OR_RETURN(weights, download());
    if (const std::string got = TensorDigest(*weights); got != digest) {
      return absl::DataLossError(absl::StrCat("the frozen model of job ", job,
                                              " as downloaded has digest ", got,
                                              ", the task names ", digest, "; not used"));
    }
    absl::Status kept = MakeDirs(dir_, 0700, env_);
    if (kept.ok()) kept = WriteSafetensors(path, *weights, {{"job", job}}, env_);
    if (!kept.ok()) {
      LogLine("fl-client",
              absl::StrCat("the frozen model of job ", job, " is not kept on disk (",
                           kept.message(), "); it is downloaded again after a restart"));
    }
  }
  absl::MutexLock lock(&mu_);
  job_ = job;
  digest_ = digest;
  model_ = FrozenModel{task.frozen_spec(), *std::move(weights)};
  return absl::OkStatus();
}

absl::StatusOr<FrozenModel> FrozenModelCache::Get(const std::string& job_id) const {
  absl::MutexLock lock(&mu_);
  if (job_ != job_id) {
    return absl::NotFoundError(absl::StrCat("the frozen model of job ", job_id, " is not here"));
  }
  return model_;
}

}  // namespace fl
