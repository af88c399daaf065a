#include "common/fault_env.h"

#include <utility>

#include "absl/strings/match.h"
#include "common/status.h"

namespace fl {
namespace {

// A file of a FaultEnv: each call asks the Env first whether it fails.
class FaultWritableFile : public WritableFile {
 public:
  FaultWritableFile(FaultEnv* env, std::unique_ptr<WritableFile> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}

  absl::Status Append(absl::string_view data) override {
    bool short_write = false;
    absl::Status fault = env_->Hit(FileOp::kWrite, path_, &short_write);
    if (fault.ok()) return base_->Append(data);
    if (short_write) base_->Append(data.substr(0, data.size() / 2)).IgnoreError();
    return fault;  // what a failed write leaves is unspecified; a short one leaves a prefix
  }
  absl::Status Sync() override {
    absl::Status fault = env_->Hit(FileOp::kSync, path_);
    return fault.ok() ? base_->Sync() : fault;
  }
  absl::Status Close() override {
    absl::Status fault = env_->Hit(FileOp::kClose, path_);
    absl::Status closed = base_->Close();  // the descriptor goes whatever the fault
    return fault.ok() ? closed : fault;
  }

 private:
  FaultEnv* const env_;
  std::unique_ptr<WritableFile> base_;
  const std::string path_;
};

class FaultRandomAccessFile : public RandomAccessFile {
 public:
  FaultRandomAccessFile(FaultEnv* env, std::unique_ptr<RandomAccessFile> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}

  absl::Status ReadAt(uint64_t offset, size_t n, char* out) const override {
    absl::Status fault = env_->Hit(FileOp::kRead, path_);
    return fault.ok() ? base_->ReadAt(offset, n, out) : fault;
  }
  absl::StatusOr<uint64_t> Size() const override { return base_->Size(); }

 private:
  FaultEnv* const env_;
  std::unique_ptr<RandomAccessFile> base_;
  const std::string path_;
};

const char* OpName(FileOp op) {
  switch (op) {
    case FileOp::kOpen:
      return "creating";
    case FileOp::kWrite:
      return "writing";
    case FileOp::kSync:
      return "syncing";
    case FileOp::kClose:
      return "closing";
    case FileOp::kRename:
      return "renaming onto";
    case FileOp::kSyncDir:
      return "syncing folder";
    case FileOp::kRead:
      return "reading";
    case FileOp::kRemove:
      return "removing";
    case FileOp::kMkdir:
      return "creating folder";
  }
  return "using";
}

}  // namespace

void FaultEnv::Inject(const Fault& fault) {
  absl::MutexLock lock(&mu_);
  faults_.push_back(Armed{fault});
}

void FaultEnv::Clear() {
  absl::MutexLock lock(&mu_);
  faults_.clear();
}

int FaultEnv::injected() {
  absl::MutexLock lock(&mu_);
  return injected_;
}

int FaultEnv::count(FileOp op) {
  absl::MutexLock lock(&mu_);
  return counts_[op];
}

absl::Status FaultEnv::Hit(FileOp op, const std::string& path, bool* short_write) {
  absl::MutexLock lock(&mu_);
  ++counts_[op];
  for (auto it = faults_.begin(); it != faults_.end(); ++it) {
    const Fault& f = it->fault;
    if (f.op != op || !absl::StrContains(path, f.path_part)) continue;
    if (++it->seen < f.nth) continue;
    absl::Status status = ErrnoStatus(OpName(op), path, f.error);
    if (short_write != nullptr) *short_write = f.short_write;
    if (!f.every) faults_.erase(it);
    ++injected_;
    return status;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WritableFile>> FaultEnv::NewWritableFile(const std::string& path,
                                                                        mode_t mode) {
  RETURN_IF_ERROR(Hit(FileOp::kOpen, path));
  absl::StatusOr<std::unique_ptr<WritableFile>> file = base_->NewWritableFile(path, mode);
  if (!file.ok()) return file.status();
  return std::unique_ptr<WritableFile>(new FaultWritableFile(this, *std::move(file), path));
}

absl::StatusOr<std::unique_ptr<RandomAccessFile>> FaultEnv::NewRandomAccessFile(
    const std::string& path) {
  RETURN_IF_ERROR(Hit(FileOp::kRead, path));
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> file = base_->NewRandomAccessFile(path);
  if (!file.ok()) return file.status();
  return std::unique_ptr<RandomAccessFile>(new FaultRandomAccessFile(this, *std::move(file), path));
}

absl::StatusOr<std::string> FaultEnv::ReadFileToString(const std::string& path) {
  RETURN_IF_ERROR(Hit(FileOp::kRead, path));
  return base_->ReadFileToString(path);
}

absl::Status FaultEnv::RenameFile(const std::string& from, const std::string& to) {
  RETURN_IF_ERROR(Hit(FileOp::kRename, to));
  return base_->RenameFile(from, to);
}

absl::Status FaultEnv::LinkFile(const std::string& from, const std::string& to) {
  RETURN_IF_ERROR(Hit(FileOp::kRename, to));  // a new name, as a rename gives
  return base_->LinkFile(from, to);
}

absl::Status FaultEnv::SyncDir(const std::string& dir) {
  RETURN_IF_ERROR(Hit(FileOp::kSyncDir, dir));
  return base_->SyncDir(dir);
}

absl::Status FaultEnv::RemoveFile(const std::string& path) {
  RETURN_IF_ERROR(Hit(FileOp::kRemove, path));
  return base_->RemoveFile(path);
}

absl::Status FaultEnv::CreateDir(const std::string& path, mode_t mode) {
  RETURN_IF_ERROR(Hit(FileOp::kMkdir, path));
  return base_->CreateDir(path, mode);
}

}  // namespace fl
