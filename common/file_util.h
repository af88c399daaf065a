// Small filesystem helpers shared by tools and daemons, over an Env (common/env.h): the real
// file system unless a caller (a test) passes another.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/env.h"

namespace fl {

// Replaces `path` with `contents` atomically: writes a temporary file in the same folder with
// permissions `mode`, fsyncs it, renames it over `path` and fsyncs the folder. A reader sees the
// old file or the new one, never a partial one. The parent folder must exist. On an error the
// temporary file is removed and `path` is as it was (unless only the folder's fsync failed:
// then the new file is in place but may not survive a crash). Codes as ErrnoStatus.
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents, mode_t mode,
                             Env* env = Env::Default());

// The same, with the contents appended by `write` (for contents too large to copy into one
// string, such as a model's tensors).
absl::Status WriteFileAtomic(const std::string& path, mode_t mode,
                             const std::function<absl::Status(WritableFile&)>& write,
                             Env* env = Env::Default());

// The whole contents of `path`, or an error naming the file.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, Env* env = Env::Default());

// Creates `path` and its missing parents; folders it creates get `mode`. An existing folder is
// left as it is.
absl::Status MakeDirs(const std::string& path, mode_t mode, Env* env = Env::Default());

// OK when only its owner may read `path` (a private key, a token): else FAILED_PRECONDITION
// saying "`field`: PATH is readable by group or others (mode ...); run 'chmod 600 PATH'". A
// file that cannot be looked at is the ErrnoStatus of stat, prefixed with `field`.
absl::Status CheckOwnerOnly(const std::string& field, const std::string& path);

// The folder part of `path` ("." for a bare name).
std::string ParentDir(const std::string& path);

}  // namespace fl
