// Reading and writing the safetensors format (8-byte little-endian header length, a JSON header,
// raw little-endian tensor bytes), so models load in PyTorch without our code.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/env.h"
#include "common/tensor.h"

namespace fl {

// Writes `tensors` (F32) and string `metadata` to `path` atomically (WriteFileAtomic: temp file,
// fsync, rename, folder fsync), mode 0644. A full disk is RESOURCE_EXHAUSTED (codes as
// ErrnoStatus).
absl::Status WriteSafetensors(const std::string& path, const TensorList& tensors,
                              const std::map<std::string, std::string>& metadata = {},
                              Env* env = Env::Default());

// Reads an F32 safetensors file. Refuses malformed headers, overlapping or out-of-range offsets
// and non-F32 dtypes with a message naming the tensor.
absl::StatusOr<TensorList> ReadSafetensors(const std::string& path,
                                           std::map<std::string, std::string>* metadata = nullptr,
                                           Env* env = Env::Default());

}  // namespace fl
