// Decoded, resized pixels kept on the site's disk (ClientConfig.pixel_cache_mib), so that a
// restart or the next job does not decode the archive again. Bounded (the least recently used
// entries go first) and checked (every entry carries its key and a CRC-32; a damaged entry is
// removed and decoded again, never trained on).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "client/data_source.h"
#include "common/env.h"

namespace fl {

struct PixelCacheStats {
  int64_t entries = 0;
  int64_t bytes = 0;    // on disk, all entries
  int64_t hits = 0;     // since Open
  int64_t misses = 0;   // absent, or damaged
  int64_t damaged = 0;  // entries found damaged and removed
  int64_t evicted = 0;  // entries removed to stay within the bound
};

// Thread-safe: the trainer's loader threads share one.
class PixelCache {
 public:
  // Opens `dir` (created if missing) and indexes the entries there, the least recently written
  // first to be evicted; left-over temporary files of an interrupted write are removed. Entries
  // beyond `max_bytes` are evicted at once. REQUIRES: max_bytes > 0.
  // Entries are written, read and removed through `env`.
  static absl::StatusOr<std::unique_ptr<PixelCache>> Open(const std::string& dir, int64_t max_bytes,
                                                          Env* env = Env::Default());

  // The pixels stored under `key`, or nullopt when there are none. An entry that does not read
  // back whole (truncated, another key, a CRC mismatch) is removed and counted as damaged.
  std::optional<std::vector<float>> Get(const std::string& key);

  // Stores `pixels` under `key` (a temporary file renamed into place, so a reader never sees
  // half an entry), then evicts the least recently used entries until the cache fits. An entry
  // larger than the whole bound is not stored. A failed write (a full disk) is returned and
  // leaves the cache as it was.
  absl::Status Put(const std::string& key, const std::vector<float>& pixels);

  PixelCacheStats stats() const;

 private:
  struct Entry {
    int64_t bytes = 0;
    uint64_t last_use = 0;
  };

  PixelCache(std::string dir, int64_t max_bytes, Env* env)
      : dir_(std::move(dir)), max_bytes_(max_bytes), env_(env) {}
  std::string PathOf(const std::string& name) const;
  void Touch(const std::string& name, int64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Drop(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvictToFit() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const int64_t max_bytes_;
  Env* const env_;
  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);  // by file name
  std::map<uint64_t, std::string> by_use_ ABSL_GUARDED_BY(mu_);          // last_use -> name
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t temp_counter_ ABSL_GUARDED_BY(mu_) = 0;
  PixelCacheStats stats_ ABSL_GUARDED_BY(mu_);
};

// The entries and bytes of the cache in `dir` without opening it (nothing is removed or
// evicted; a running daemon may hold it): for `flctl data check`. NOT_FOUND when there is none.
absl::StatusOr<PixelCacheStats> InspectPixelCache(const std::string& dir);

// What names a sample's pixels at `shape`: its image (SOP Instance UID, else the source's image
// id, else its path), its file's size and modification time (a replaced file is decoded again)
// and the shape. Empty when the file cannot be stat'ed (nothing is cached then).
std::string PixelCacheKey(const Sample& sample, const PixelShape& shape);

// A loader (the trainer's ImageLoader) that reads `source` through `cache`: a hit skips the
// decode; a miss decodes and stores. A failed store is logged once and otherwise ignored (the
// decoded pixels are returned all the same). REQUIRES: both outlive the loader.
std::function<absl::StatusOr<std::vector<float>>(const Sample&, int)> CachedLoader(
    const DataSource* source, PixelCache* cache);

}  // namespace fl
