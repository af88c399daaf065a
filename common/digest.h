// Content digests of model weights: what identifies a model that a job builds on (a diffusion
// job's frozen autoencoder) across the coordinator, the wire and a site's cache; and of files.
#pragma once

#include <string>

#include "absl/strings/string_view.h"
#include "common/tensor.h"

namespace fl {

// SHA-256, as 64 lowercase hex digits, of the tensors in order: each one's name, shape and
// float32 bytes (little-endian), every field length-prefixed so that no two lists share a
// digest by re-cutting the same bytes.
std::string TensorDigest(const TensorList& tensors);

// SHA-256 of `bytes`, as 64 lowercase hex digits (`sha256sum`'s): a cached file's checksum.
std::string Sha256Hex(absl::string_view bytes);

}  // namespace fl
