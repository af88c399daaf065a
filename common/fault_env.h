// Test support (linked only into tests): an Env that passes every call to a real one, except
// those a test has told it to break, as LevelDB's fault_injection_test breaks its Env. So the
// failures of a full or failing disk (EIO, ENOSPC, a short write, a failed fsync or rename) run
// on every machine, without a tmpfs or a user namespace.
#pragma once

#include <cerrno>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/env.h"

namespace fl {

// The kinds of operation a fault can hit.
enum class FileOp {
  kOpen,     // NewWritableFile (opening a file to write)
  kWrite,    // WritableFile::Append
  kSync,     // WritableFile::Sync (fsync)
  kClose,    // WritableFile::Close
  kRename,   // RenameFile, LinkFile
  kSyncDir,  // SyncDir (fsync of a folder)
  kRead,     // NewRandomAccessFile, ReadFileToString, RandomAccessFile::ReadAt
  kRemove,   // RemoveFile
  kMkdir,    // CreateDir
};

struct Fault {
  FileOp op = FileOp::kWrite;
  int error = EIO;  // the errno the operation fails with (ErrnoStatus maps it to a code)
  // The `nth` matching operation from now fails (1: the next one) ...
  int nth = 1;
  // ... and, when `every`, each matching one after it too, until Clear.
  bool every = false;
  // kWrite only: the first half of the bytes reach the file before the error, as when a disk
  // fills in the middle of a write.
  bool short_write = false;
  // Only operations on a path that contains this (empty: every path).
  std::string path_part;
};

// Thread-safe.
class FaultEnv : public Env {
 public:
  // REQUIRES: `base` outlives this Env (and every file it opened).
  explicit FaultEnv(Env* base = Env::Default()) : base_(base) {}

  void Inject(const Fault& fault);
  // Drops every fault not yet spent: from now on every call succeeds as `base` does.
  void Clear();
  // The faults injected so far (failed operations).
  int injected();
  // The operations of kind `op` seen so far (failed or not).
  int count(FileOp op);

  // The status the operation `op` on `path` fails with, or OK: counts the operation, and spends
  // the fault it hits. `*short_write` tells a kWrite to write half its bytes first.
  absl::Status Hit(FileOp op, const std::string& path, bool* short_write = nullptr);

  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                mode_t mode) override;
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override;
  absl::StatusOr<std::string> ReadFileToString(const std::string& path) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override;
  absl::Status LinkFile(const std::string& from, const std::string& to) override;
  absl::Status SyncDir(const std::string& dir) override;
  absl::Status RemoveFile(const std::string& path) override;
  absl::Status CreateDir(const std::string& path, mode_t mode) override;
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    return base_->ListDir(dir);
  }
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    return base_->FileSize(path);
  }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  bool IsDirectory(const std::string& path) override { return base_->IsDirectory(path); }

 private:
  struct Armed {
    Fault fault;
    int seen = 0;  // matching operations since it was injected
  };

  Env* const base_;
  absl::Mutex mu_;
  std::vector<Armed> faults_ ABSL_GUARDED_BY(mu_);
  std::map<FileOp, int> counts_ ABSL_GUARDED_BY(mu_);
  int injected_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fl
