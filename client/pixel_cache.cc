#include "client/pixel_cache.h"

#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

// Entry file: "FLPX", version, key length, key, value count, values (host float), CRC-32 of
// everything before it.
constexpr char kMagic[4] = {'F', 'L', 'P', 'X'};
constexpr uint32_t kVersion = 1;
constexpr char kSuffix[] = ".px";
constexpr char kTempSuffix[] = ".tmp";

template <typename T>
void Append(std::string* out, const T& value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
bool Take(const std::string& in, size_t* offset, T* value) {
  if (in.size() - *offset < sizeof(T)) return false;
  std::memcpy(value, in.data() + *offset, sizeof(T));
  *offset += sizeof(T);
  return true;
}

uint32_t Crc(const char* data, size_t size) {
  return static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(data), static_cast<uInt>(size)));
}

std::string Encode(const std::string& key, const std::vector<float>& pixels) {
  std::string out(kMagic, sizeof(kMagic));
  Append(&out, kVersion);
  Append(&out, static_cast<uint32_t>(key.size()));
  out += key;
  Append(&out, static_cast<uint64_t>(pixels.size()));
  out.append(reinterpret_cast<const char*>(pixels.data()), pixels.size() * sizeof(float));
  Append(&out, Crc(out.data(), out.size()));
  return out;
}

// The pixels, or nullopt when `bytes` is not a whole entry of `key`; *other_key is set when it
// is a sound entry of another key (a hash collision, not damage).
std::optional<std::vector<float>> Decode(const std::string& bytes, const std::string& key,
                                         bool* other_key) {
  *other_key = false;
  if (bytes.size() < sizeof(kMagic) + 20 || std::memcmp(bytes.data(), kMagic, 4) != 0) {
    return std::nullopt;
  }
  uint32_t crc = 0;
  std::memcpy(&crc, bytes.data() + bytes.size() - 4, 4);
  if (crc != Crc(bytes.data(), bytes.size() - 4)) return std::nullopt;
  size_t offset = sizeof(kMagic);
  uint32_t version = 0, key_size = 0;
  uint64_t count = 0;
  if (!Take(bytes, &offset, &version) || version != kVersion || !Take(bytes, &offset, &key_size) ||
      bytes.size() - offset < key_size) {
    return std::nullopt;
  }
  if (bytes.compare(offset, key_size, key) != 0 || key_size != key.size()) {
    *other_key = true;
    return std::nullopt;
  }
  offset += key_size;
  if (!Take(bytes, &offset, &count) || bytes.size() - offset < 4) return std::nullopt;
  const size_t payload = bytes.size() - offset - 4;
  if (payload % sizeof(float) != 0 || payload / sizeof(float) != count) return std::nullopt;
  std::vector<float> pixels(count);
  std::memcpy(pixels.data(), bytes.data() + offset, count * sizeof(float));
  return pixels;
}

std::string NameOf(const std::string& key) {
  return absl::StrFormat("%016x%s", StableHash64(key), kSuffix);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PixelCache>> PixelCache::Open(const std::string& dir,
                                                             int64_t max_bytes, Env* env) {
  if (max_bytes <= 0) return absl::InvalidArgumentError("pixel cache bound must be > 0");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("pixel cache ", dir, ": cannot create the folder: ", ec.message()));
  }
  std::vector<std::pair<fs::file_time_type, std::pair<std::string, int64_t>>> found;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (absl::EndsWith(name, kTempSuffix)) {
      fs::remove(it->path(), ec);
    } else if (absl::EndsWith(name, kSuffix) && it->is_regular_file(ec)) {
      found.push_back({it->last_write_time(ec), {name, static_cast<int64_t>(it->file_size(ec))}});
    }
  }
  if (ec) return absl::UnavailableError(absl::StrCat("pixel cache ", dir, ": ", ec.message()));
  std::sort(found.begin(), found.end());
  std::unique_ptr<PixelCache> cache(new PixelCache(dir, max_bytes, env));
  absl::MutexLock lock(&cache->mu_);
  for (const auto& [time, entry] : found) cache->Touch(entry.first, entry.second);
  cache->EvictToFit();
  return cache;
}

std::string PixelCache::PathOf(const std::string& name) const {
  return (fs::path(dir_) / name).string();
}

void PixelCache::Touch(const std::string& name, int64_t bytes) {
  auto [it, inserted] = entries_.try_emplace(name);
  if (!inserted) {
    by_use_.erase(it->second.last_use);
    stats_.bytes -= it->second.bytes;
  }
  it->second = Entry{bytes, ++clock_};
  by_use_[it->second.last_use] = name;
  stats_.bytes += bytes;
  stats_.entries = static_cast<int64_t>(entries_.size());
}

void PixelCache::Drop(const std::string& name) {
  auto it = entries_.find(name);
  if (it == entries_.end()) return;
  env_->RemoveFile(PathOf(name)).IgnoreError();  // gone already, or removed at the next Open
  by_use_.erase(it->second.last_use);
  stats_.bytes -= it->second.bytes;
  entries_.erase(it);
  stats_.entries = static_cast<int64_t>(entries_.size());
}

void PixelCache::EvictToFit() {
  while (stats_.bytes > max_bytes_ && !by_use_.empty()) {
    Drop(by_use_.begin()->second);
    ++stats_.evicted;
  }
}

std::optional<std::vector<float>> PixelCache::Get(const std::string& key) {
  const std::string name = NameOf(key);
  {
    absl::MutexLock lock(&mu_);
    if (entries_.count(name) == 0) {
      ++stats_.misses;
      return std::nullopt;
    }
  }
  // An entry that cannot be read (an I/O error, removed meanwhile) decodes as damaged: dropped.
  const std::string bytes = env_->ReadFileToString(PathOf(name)).value_or(std::string());
  bool other_key = false;
  std::optional<std::vector<float>> pixels = Decode(bytes, key, &other_key);
  absl::MutexLock lock(&mu_);
  if (!pixels) {
    ++stats_.misses;
    if (!other_key && entries_.count(name) > 0) {
      std::cerr << "pixel cache: removing damaged entry " << PathOf(name) << "\n";
      Drop(name);
      ++stats_.damaged;
    }
    return std::nullopt;
  }
  ++stats_.hits;
  if (auto it = entries_.find(name); it != entries_.end()) Touch(name, it->second.bytes);
  return pixels;
}

absl::Status PixelCache::Put(const std::string& key, const std::vector<float>& pixels) {
  const std::string bytes = Encode(key, pixels);
  if (static_cast<int64_t>(bytes.size()) > max_bytes_) return absl::OkStatus();
  const std::string name = NameOf(key);
  std::string temp;
  {
    absl::MutexLock lock(&mu_);
    temp = PathOf(absl::StrCat(name, ".", ++temp_counter_, kTempSuffix));
  }
  // No fsync: an entry torn by a crash fails its CRC and is dropped when read.
  absl::Status written = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> out, env_->NewWritableFile(temp, 0600));
    RETURN_IF_ERROR(out->Append(bytes));
    RETURN_IF_ERROR(out->Close());
    return env_->RenameFile(temp, PathOf(name));
  }();
  if (!written.ok()) {
    env_->RemoveFile(temp).IgnoreError();
    return Annotate(written, "pixel cache");
  }
  absl::MutexLock lock(&mu_);
  Touch(name, static_cast<int64_t>(bytes.size()));
  EvictToFit();
  return absl::OkStatus();
}

PixelCacheStats PixelCache::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::StatusOr<PixelCacheStats> InspectPixelCache(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("no pixel cache at ", dir));
  }
  PixelCacheStats stats;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!absl::EndsWith(it->path().filename().string(), kSuffix)) continue;
    const auto bytes = it->file_size(ec);
    if (ec) continue;  // removed meanwhile
    ++stats.entries;
    stats.bytes += static_cast<int64_t>(bytes);
  }
  if (ec) return absl::UnavailableError(absl::StrCat("pixel cache ", dir, ": ", ec.message()));
  return stats;
}

std::string PixelCacheKey(const Sample& sample, const PixelShape& shape) {
  std::error_code ec;
  const auto size = fs::file_size(sample.path, ec);
  if (ec) return "";
  const auto time = fs::last_write_time(sample.path, ec);
  if (ec) return "";
  const std::string& image = !sample.sop_instance_uid.empty() ? sample.sop_instance_uid
                             : !sample.image_id.empty()       ? sample.image_id
                                                              : sample.path;
  return absl::StrCat(image, "|", size, "|", time.time_since_epoch().count(), "|", shape.depth, "x",
                      shape.height, "x", shape.width);
}

std::function<absl::StatusOr<std::vector<float>>(const Sample&, int)> CachedLoader(
    const DataSource* source, PixelCache* cache) {
  auto warned = std::make_shared<std::atomic<bool>>(false);
  return [source, cache, warned](const Sample& sample,
                                 int size) -> absl::StatusOr<std::vector<float>> {
    const PixelShape shape = PixelShape::Square(size);
    const std::string key = PixelCacheKey(sample, shape);
    if (!key.empty()) {
      if (std::optional<std::vector<float>> hit = cache->Get(key)) return *std::move(hit);
    }
    absl::StatusOr<std::vector<float>> pixels = source->Load(sample, shape);
    if (pixels.ok() && !key.empty()) {
      absl::Status stored = cache->Put(key, *pixels);
      if (!stored.ok() && !warned->exchange(true)) {
        std::cerr << stored.message() << "; going on without caching what does not fit\n";
      }
    }
    return pixels;
  };
}

}  // namespace fl
