#include "common/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/json_lite.h"
#include "common/status.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors stores little-endian bytes; this code copies them "
              "as they are");

namespace fl {
namespace {

// Same bound as the reference implementation: a header is never larger than 100
// MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr int kMaxJsonDepth = 4;

// ---------------------------------------------------------------------------------------------
// Writing.

absl::Status CheckWritable(const TensorList& tensors) {
  std::set<std::string> names;
  for (const NamedTensor& t : tensors) {
    if (t.name.empty()) return absl::InvalidArgumentError("safetensors: empty tensor name");
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError("safetensors: tensor name \"__metadata__\" is reserved");
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors: duplicate tensor ", t.name));
    }
    for (int64_t d : t.shape) {
      if (d < 0)
        return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": negative dim"));
    }
    if (static_cast<int64_t>(t.data.size()) != t.numel()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", t.name, ": ", t.data.size(), " values for shape of ", t.numel()));
    }
  }
  return absl::OkStatus();
}

// The header bytes: JSON padded with spaces so the data starts 8-byte aligned.
std::string BuildHeader(const TensorList& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::string json = "{";
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) json += ",";
      first = false;
      json += JsonQuote(key);
      json += ":";
      json += JsonQuote(value);
    }
    json += "}";
  }
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    if (json.size() > 1) json += ",";
    json += JsonQuote(t.name);
    json += ":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) absl::StrAppend(&json, i ? "," : "", t.shape[i]);
    absl::StrAppend(&json, "],\"data_offsets\":[", offset, ",", offset + t.byte_size(), "]}");
    offset += t.byte_size();
  }
  json += "}";
  json.append((8 - json.size() % 8) % 8, ' ');
  return json;
}

absl::Status WriteContents(WritableFile& file, const TensorList& tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::string header = BuildHeader(tensors, metadata);
  char len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>(n >> (8 * i));
  RETURN_IF_ERROR(file.Append(absl::string_view(len, sizeof(len))));
  RETURN_IF_ERROR(file.Append(header));
  for (const NamedTensor& t : tensors) {
    RETURN_IF_ERROR(file.Append(
        absl::string_view(reinterpret_cast<const char*>(t.data.data()), t.byte_size())));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Reading.

struct Entry {
  NamedTensor tensor;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<Entry> ParseEntry(const std::string& name, const JsonValue& v) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors tensor ", name, ": ", what));
  };
  if (v.kind != JsonValue::Kind::kObject) return bad("entry is not an object");
  const JsonValue* dtype = nullptr;
  const JsonValue* shape = nullptr;
  const JsonValue* offsets = nullptr;
  for (const auto& [key, value] : v.members) {
    if (key == "dtype")
      dtype = &value;
    else if (key == "shape")
      shape = &value;
    else if (key == "data_offsets")
      offsets = &value;
    else
      return bad(absl::StrCat("unknown field \"", key, "\""));
  }
  if (!dtype || !shape || !offsets) return bad("needs dtype, shape and data_offsets");
  if (dtype->kind != JsonValue::Kind::kString || dtype->text != "F32") {
    return bad(absl::StrCat("dtype must be F32, got ", dtype->text));
  }
  if (shape->kind != JsonValue::Kind::kArray) return bad("shape is not an array");
  Entry e;
  e.tensor.name = name;
  uint64_t numel = 1;
  for (const JsonValue& d : shape->items) {
    if (d.kind != JsonValue::Kind::kInteger) return bad("shape holds a non-integer");
    if (d.integer > 0 && numel > (uint64_t{1} << 60) / d.integer) return bad("shape too large");
    numel *= d.integer;
    e.tensor.shape.push_back(static_cast<int64_t>(d.integer));
  }
  if (offsets->kind != JsonValue::Kind::kArray || offsets->items.size() != 2 ||
      offsets->items[0].kind != JsonValue::Kind::kInteger ||
      offsets->items[1].kind != JsonValue::Kind::kInteger) {
    return bad("data_offsets must be two integers");
  }
  e.begin = offsets->items[0].integer;
  e.end = offsets->items[1].integer;
  if (e.end < e.begin) return bad("data_offsets end before begin");
  if (e.end - e.begin != numel * sizeof(float)) {
    return bad(absl::StrCat("byte range of ", e.end - e.begin, " for ", numel, " F32 values"));
  }
  return e;
}

absl::Status ParseMetadata(const JsonValue& v, std::map<std::string, std::string>* metadata) {
  if (v.kind != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError("safetensors: __metadata__ is not an object");
  }
  for (const auto& [key, value] : v.members) {
    if (value.kind != JsonValue::Kind::kString) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors: __metadata__ value of ", key, " is not a string"));
    }
    if (metadata) (*metadata)[key] = value.text;
  }
  return absl::OkStatus();
}

// Sorts entries by offset and checks they tile [0, data_size) exactly: no gap,
// no overlap.
absl::Status CheckLayout(std::vector<Entry>* entries, uint64_t data_size) {
  std::stable_sort(entries->begin(), entries->end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const Entry& e : *entries) {
    if (e.begin != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors tensor ", e.tensor.name, ": data starts at ", e.begin,
                       ", expected ", expected, " (offsets overlap or leave a gap)"));
    }
    expected = e.end;
  }
  if (expected != data_size) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: tensors cover ", expected,
                                                   " data bytes but the file holds ", data_size));
  }
  return absl::OkStatus();
}

absl::Status ReadExact(const RandomAccessFile& file, void* out, size_t size, uint64_t offset) {
  return file.ReadAt(offset, size, static_cast<char*>(out));
}

// Reads and validates the header; returns the entries in data order and the
// data start.
absl::StatusOr<std::vector<Entry>> ReadHeader(const RandomAccessFile& file, const std::string& path,
                                              std::map<std::string, std::string>* metadata,
                                              uint64_t* data_start) {
  ASSIGN_OR_RETURN(const uint64_t file_size, file.Size());
  if (file_size < 8) return absl::DataLossError(absl::StrCat(path, ": shorter than 8 bytes"));
  unsigned char len[8];
  RETURN_IF_ERROR(ReadExact(file, len, 8, 0));
  uint64_t header_size = 0;
  for (int i = 0; i < 8; ++i) header_size |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (header_size < 2 || header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_size,
                                            " does not fit a file of ", file_size, " bytes"));
  }
  std::string header(header_size, '\0');
  RETURN_IF_ERROR(ReadExact(file, header.data(), header_size, 8));
  if (header[0] != '{') return absl::DataLossError(absl::StrCat(path, ": header is not JSON"));
  ASSIGN_OR_RETURN(JsonValue root, ParseJsonSubset(header, kMaxJsonDepth, "safetensors header"));
  if (root.kind != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError("safetensors: header is not a JSON object");
  }
  std::vector<Entry> entries;
  for (const auto& [name, value] : root.members) {
    if (name == "__metadata__") {
      RETURN_IF_ERROR(ParseMetadata(value, metadata));
      continue;
    }
    ASSIGN_OR_RETURN(Entry e, ParseEntry(name, value));
    entries.push_back(std::move(e));
  }
  *data_start = 8 + header_size;
  RETURN_IF_ERROR(CheckLayout(&entries, file_size - *data_start));
  return entries;
}

absl::StatusOr<TensorList> ReadOpen(const RandomAccessFile& file, const std::string& path,
                                    std::map<std::string, std::string>* metadata) {
  uint64_t data_start = 0;
  ASSIGN_OR_RETURN(std::vector<Entry> entries, ReadHeader(file, path, metadata, &data_start));
  TensorList out;
  out.reserve(entries.size());
  for (Entry& e : entries) {
    e.tensor.data.resize((e.end - e.begin) / sizeof(float));
    RETURN_IF_ERROR(
        Annotate(ReadExact(file, e.tensor.data.data(), e.end - e.begin, data_start + e.begin),
                 absl::StrCat("tensor ", e.tensor.name)));
    out.push_back(std::move(e.tensor));
  }
  return out;
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path, const TensorList& tensors,
                              const std::map<std::string, std::string>& metadata, Env* env) {
  RETURN_IF_ERROR(CheckWritable(tensors));
  return WriteFileAtomic(
      path, 0644, [&](WritableFile& file) { return WriteContents(file, tensors, metadata); }, env);
}

absl::StatusOr<TensorList> ReadSafetensors(const std::string& path,
                                           std::map<std::string, std::string>* metadata, Env* env) {
  ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, env->NewRandomAccessFile(path));
  if (metadata) metadata->clear();
  return ReadOpen(*file, path, metadata);
}

}  // namespace fl
