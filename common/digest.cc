#include "common/digest.h"

#include <openssl/evp.h>

#include <cstdint>
#include <memory>

#include "absl/strings/escaping.h"

namespace fl {
namespace {

void Update(EVP_MD_CTX* ctx, const void* data, size_t size) { EVP_DigestUpdate(ctx, data, size); }

void UpdateLength(EVP_MD_CTX* ctx, uint64_t n) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  Update(ctx, bytes, sizeof(bytes));
}

using DigestContext = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

DigestContext NewSha256() {
  DigestContext ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  return ctx;
}

std::string FinalHex(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), length));
}

}  // namespace

std::string TensorDigest(const TensorList& tensors) {
  DigestContext ctx = NewSha256();
  UpdateLength(ctx.get(), tensors.size());
  for (const NamedTensor& t : tensors) {
    UpdateLength(ctx.get(), t.name.size());
    Update(ctx.get(), t.name.data(), t.name.size());
    UpdateLength(ctx.get(), t.shape.size());
    for (int64_t d : t.shape) UpdateLength(ctx.get(), static_cast<uint64_t>(d));
    UpdateLength(ctx.get(), t.byte_size());
    Update(ctx.get(), t.data.data(), t.byte_size());  // x86-64 and aarch64: little-endian
  }
  return FinalHex(ctx.get());
}

std::string Sha256Hex(absl::string_view bytes) {
  DigestContext ctx = NewSha256();
  Update(ctx.get(), bytes.data(), bytes.size());
  return FinalHex(ctx.get());
}

}  // namespace fl
