// libFuzzer target for the parsers of files an operator or a peer hands us: the text-format
// configs (parsed and validated as each of the four config types), the JSON subset, and the
// safetensors reader (the same bytes as a file in memory). Whatever the bytes, nothing may
// crash, leak or hang, and whatever a parser accepts must be internally consistent.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include <google/protobuf/stubs/logging.h>

#include "absl/strings/str_cat.h"
#include "common/config.h"
#include "common/json_lite.h"
#include "common/safetensors.h"

namespace fl {
namespace {

#define FUZZ_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

// Parses `text` as T and validates it; a validated config must validate again unchanged
// (defaults are filled once, and filled defaults are themselves valid).
template <typename T>
void ParseAndValidate(const std::string& text, absl::StatusOr<T> (*validate)(T)) {
  absl::StatusOr<T> parsed = ParseTextProto<T>(text, "fuzz");
  if (!parsed.ok()) return;
  absl::StatusOr<T> valid = validate(*std::move(parsed));
  if (!valid.ok()) return;
  absl::StatusOr<T> again = validate(*valid);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(again->SerializeAsString() == valid->SerializeAsString());
}

// Depth of the deepest nesting in `v` (a scalar is depth 0).
int Depth(const JsonValue& v) {
  int depth = 0;
  for (const auto& member : v.members) depth = std::max(depth, 1 + Depth(member.second));
  for (const JsonValue& item : v.items) depth = std::max(depth, 1 + Depth(item));
  return depth;
}

void ParseJson(const std::string& text) {
  constexpr int kMaxDepth = 8;
  absl::StatusOr<JsonValue> value = ParseJsonSubset(text, kMaxDepth, "fuzz");
  if (!value.ok()) return;
  FUZZ_CHECK(Depth(*value) <= kMaxDepth + 1);
  // Every string the parser accepted must survive quoting and parsing back.
  if (value->kind == JsonValue::Kind::kString) {
    absl::StatusOr<JsonValue> back = ParseJsonSubset(JsonQuote(value->text), 1, "requote");
    FUZZ_CHECK(back.ok() && back->text == value->text);
  }
}

// One in-memory file, reused across inputs, reachable by path through /proc/self/fd.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("fuzz.safetensors", 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = absl::StrCat("/proc/self/fd/", fd_);
  }
  const std::string& Replace(const std::string& contents) {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0);
    FUZZ_CHECK(pwrite(fd_, contents.data(), contents.size(), 0) ==
               static_cast<ssize_t>(contents.size()));
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

void ReadAsSafetensors(const std::string& bytes) {
  static MemFile* file = new MemFile();
  std::map<std::string, std::string> metadata;
  absl::StatusOr<TensorList> tensors = ReadSafetensors(file->Replace(bytes), &metadata);
  if (!tensors.ok()) return;
  uint64_t total = 0;
  for (const NamedTensor& t : *tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0 && !__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel));
    }
    FUZZ_CHECK(t.data.size() == numel);
    total += t.byte_size();
  }
  FUZZ_CHECK(total <= bytes.size());
}

}  // namespace
}  // namespace fl

// Protobuf logs each string with invalid UTF-8 that it serializes; the text format lets a config
// carry one ("\377"), and that is not what this target looks for.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  fl::ParseAndValidate<fl::CoordinatorConfig>(text, &fl::ValidateCoordinatorConfig);
  fl::ParseAndValidate<fl::ClientConfig>(text, &fl::ValidateClientConfig);
  fl::ParseAndValidate<fl::AdminConfig>(text, &fl::ValidateAdminConfig);
  fl::ParseAndValidate<fl::JobSpec>(text, &fl::ValidateJobSpec);
  fl::ParseJson(text);
  fl::ReadAsSafetensors(text);
  return 0;
}
