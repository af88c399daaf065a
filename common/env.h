// Files as the daemons see them, behind one injected interface (as LevelDB's Env), so that tests
// can break a write, an fsync or a rename on any machine (common/fault_env.h) instead of filling
// a real disk. Time is injected apart, as a Clock (common/clock.h).
//
// SQLite files (the coordinator's store, the site's privacy ledger) keep SQLite's own I/O: they
// do not go through an Env (a SQLite VFS would be the seam there; tests break them through
// SQLite's own hooks or a real full tmpfs).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fl {

// The status of a file operation that failed with errno `err`; the message names `operation`
// ("writing", "renaming x onto") and `path`, then strerror. Every file error of the daemons
// takes its code from here:
//   ENOSPC, EDQUOT                 RESOURCE_EXHAUSTED  (the disk or quota is full: wait, retry)
//   EIO                            UNAVAILABLE         (the device failed this operation; what
//                                                       was on disk before is intact, so it may
//                                                       be tried again; DATA_LOSS is kept for
//                                                       contents found damaged: a bad CRC, a
//                                                       truncated file)
//   EACCES, EPERM                  PERMISSION_DENIED
//   EROFS                          FAILED_PRECONDITION (a read-only file system)
//   ENOENT                         NOT_FOUND
//   EEXIST                         ALREADY_EXISTS
//   ENOTDIR, EISDIR                FAILED_PRECONDITION (a file where a folder should be, or the
//                                                       reverse)
//   anything else                  INTERNAL
absl::Status ErrnoStatus(absl::string_view operation, absl::string_view path, int err);

// A file being written. Not thread-safe: one writer at a time.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data` (possibly buffered), or fails; after a failure the file holds an
  // unknown prefix of what was appended.
  virtual absl::Status Append(absl::string_view data) = 0;
  // Writes what is buffered and makes the contents durable (fsync).
  virtual absl::Status Sync() = 0;
  // Writes what is buffered and closes the file. Call once; the destructor closes a file not
  // closed and drops any error (call Close to see it).
  virtual absl::Status Close() = 0;
};

// A file read at offsets. Thread-safe.
class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads exactly `n` bytes at `offset` into `out`; a file that ends first is DATA_LOSS.
  virtual absl::Status ReadAt(uint64_t offset, size_t n, char* out) const = 0;
  virtual absl::StatusOr<uint64_t> Size() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The real file system (POSIX). Never deleted; thread-safe.
  static Env* Default();

  // Creates `path`, or truncates it, with permissions exactly `mode` (not masked by umask).
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                        mode_t mode) = 0;
  virtual absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) = 0;
  // The whole contents of `path`, read to its end (also files whose size stat cannot tell).
  virtual absl::StatusOr<std::string> ReadFileToString(const std::string& path) = 0;
  // Replaces `to` with `from` atomically (rename(2)); both in the same file system.
  virtual absl::Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Gives the file `from` a second name `to` (link(2)); ALREADY_EXISTS when `to` exists.
  virtual absl::Status LinkFile(const std::string& from, const std::string& to) = 0;
  // Makes the folder's entries (a rename, a new file) durable: fsync of the folder.
  virtual absl::Status SyncDir(const std::string& dir) = 0;
  // NOT_FOUND when there is no such file.
  virtual absl::Status RemoveFile(const std::string& path) = 0;
  // Creates one folder with permissions exactly `mode`; its parent must exist. An existing
  // folder is ALREADY_EXISTS and left as it is.
  virtual absl::Status CreateDir(const std::string& path, mode_t mode) = 0;
  // The names (not paths) of the entries of `dir`, without "." and "..", in no set order.
  virtual absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual absl::StatusOr<uint64_t> FileSize(const std::string& path) = 0;
  // Whether `path` exists (as anything); false also when it cannot be looked at.
  virtual bool FileExists(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
};

}  // namespace fl
