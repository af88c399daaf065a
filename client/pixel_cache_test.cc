#include "client/pixel_cache.h"

#include <filesystem>
#include <fstream>
#include <thread>

#include "common/fault_env.h"
#include "common/test_dir.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

std::vector<float> Pixels(int n, float start) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + 0.001f * i;
  return v;
}

std::vector<std::string> EntryFiles(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().string());
  return names;
}

TEST(PixelCacheTest, StoresReadsBackAndSurvivesAReopen) {
  const std::string dir = FreshTestDir("pixel_cache") + "/cache";
  auto cache = PixelCache::Open(dir, 1 << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_FALSE((*cache)->Get("a").has_value());
  ASSERT_TRUE((*cache)->Put("a", Pixels(64, 0.5f)).ok());
  EXPECT_EQ((*cache)->Get("a"), Pixels(64, 0.5f));
  EXPECT_FALSE((*cache)->Get("b").has_value());
  PixelCacheStats stats = (*cache)->stats();
  EXPECT_EQ(stats.entries, 1);
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.misses, 2);
  EXPECT_GT(stats.bytes, 64 * 4);
  std::ofstream(dir + "/0123456789abcdef.px.7.tmp") << "an interrupted write";
  auto again = PixelCache::Open(dir, 1 << 20);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->stats().entries, 1);
  EXPECT_EQ((*again)->Get("a"), Pixels(64, 0.5f));
  EXPECT_EQ(EntryFiles(dir).size(), 1u);  // the temporary file is gone
  auto seen = InspectPixelCache(dir);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(seen->entries, 1);
  EXPECT_EQ(seen->bytes, (*again)->stats().bytes);
  EXPECT_EQ(InspectPixelCache(dir + "/none").status().code(), absl::StatusCode::kNotFound);
}

TEST(PixelCacheTest, EvictsTheLeastRecentlyUsedToStayWithinItsBound) {
  const std::string dir = FreshTestDir("pixel_cache_bound");
  const int64_t entry = 4 * 100 + 64;  // about one entry of 100 values
  auto cache = PixelCache::Open(dir, 2 * entry + 20);
  ASSERT_TRUE(cache.ok());
  PixelCache& c = **cache;
  ASSERT_TRUE(c.Put("first", Pixels(100, 0.1f)).ok());
  ASSERT_TRUE(c.Put("second", Pixels(100, 0.2f)).ok());
  ASSERT_TRUE(c.Get("first").has_value());  // now the most recently used
  ASSERT_TRUE(c.Put("third", Pixels(100, 0.3f)).ok());
  EXPECT_TRUE(c.Get("first").has_value());
  EXPECT_FALSE(c.Get("second").has_value());
  EXPECT_TRUE(c.Get("third").has_value());
  EXPECT_EQ(c.stats().evicted, 1);
  EXPECT_LE(c.stats().bytes, 2 * entry + 20);
  EXPECT_EQ(EntryFiles(dir).size(), 2u);
  // An entry larger than the whole bound is not stored.
  ASSERT_TRUE(c.Put("huge", Pixels(1000, 0.0f)).ok());
  EXPECT_FALSE(c.Get("huge").has_value());
  // A smaller bound on reopening evicts at once.
  auto smaller = PixelCache::Open(dir, entry + 10);
  ASSERT_TRUE(smaller.ok());
  EXPECT_EQ((*smaller)->stats().entries, 1);
}

TEST(PixelCacheTest, DamagedEntriesAreRemovedAndNeverReturned) {
  const std::string dir = FreshTestDir("pixel_cache_damage");
  auto cache = PixelCache::Open(dir, 1 << 20);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->Put("flip", Pixels(50, 0.5f)).ok());
  ASSERT_TRUE((*cache)->Put("cut", Pixels(50, 0.5f)).ok());
  auto files = EntryFiles(dir);
  ASSERT_EQ(files.size(), 2u);
  for (const std::string& path : files) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    f.close();
    // One file gets a bit flipped in its pixels, the other is cut short.
    if (bytes.find("flip") != std::string::npos) {
      bytes[bytes.size() / 2] ^= 0x10;
      std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    } else {
      std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes.substr(0, 40);
    }
  }
  EXPECT_FALSE((*cache)->Get("flip").has_value());
  EXPECT_FALSE((*cache)->Get("cut").has_value());
  EXPECT_EQ((*cache)->stats().damaged, 2);
  EXPECT_EQ((*cache)->stats().entries, 0);
  EXPECT_TRUE(EntryFiles(dir).empty());
}

// A disk that fills in the middle of an entry: the error says so (RESOURCE_EXHAUSTED), nothing
// half-written stays, and the cache goes on (a read that fails with EIO is a miss, the entry
// dropped; the image is decoded again).
TEST(PixelCacheTest, AFullDiskOrAFailingReadLeavesTheCacheSound) {
  const std::string dir = FreshTestDir("pixel_cache_faults");
  FaultEnv env;
  auto cache = PixelCache::Open(dir, 1 << 20, &env);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE((*cache)->Put("kept", Pixels(50, 0.5f)).ok());
  env.Inject({.op = FileOp::kWrite, .error = ENOSPC, .short_write = true});
  const absl::Status full = (*cache)->Put("torn", Pixels(50, 0.25f));
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  EXPECT_NE(full.message().find("pixel cache"), std::string::npos) << full;
  EXPECT_EQ(EntryFiles(dir).size(), 1u);  // no temporary file left
  EXPECT_FALSE((*cache)->Get("torn").has_value());
  env.Inject({.op = FileOp::kRename, .error = EIO});
  EXPECT_EQ((*cache)->Put("torn", Pixels(50, 0.25f)).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(EntryFiles(dir).size(), 1u);
  ASSERT_TRUE((*cache)->Put("torn", Pixels(50, 0.25f)).ok());
  EXPECT_EQ((*cache)->Get("torn"), Pixels(50, 0.25f));
  env.Inject({.op = FileOp::kRead, .error = EIO});
  EXPECT_FALSE((*cache)->Get("kept").has_value());
  EXPECT_EQ((*cache)->stats().entries, 1);
}

// A source that counts its decodes.
class CountingSource : public DataSource {
 public:
  std::string Kind() const override { return "counting"; }
  absl::StatusOr<Dataset> List(double) const override { return Dataset(); }
  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    ++loads;
    if (sample.image_id == "bad") return absl::InvalidArgumentError("bad: does not decode");
    return std::vector<float>(shape.Elements(), 0.25f);
  }
  mutable std::atomic<int> loads{0};
};

TEST(PixelCacheTest, CachedLoaderDecodesOncePerImageFileAndShape) {
  const std::string dir = FreshTestDir("pixel_cache_loader");
  std::ofstream(dir + "/image.jpg") << "stands for an image file";
  Sample sample;
  sample.path = dir + "/image.jpg";
  sample.image_id = "chexpert:train/patient1/study1/view1_frontal.jpg";
  auto cache = PixelCache::Open(dir + "/cache", 1 << 20);
  ASSERT_TRUE(cache.ok());
  CountingSource source;
  auto load = CachedLoader(&source, cache->get());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) ASSERT_EQ(load(sample, 8).value().size(), 64u);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(source.loads.load(), 4);  // at most one decode per thread racing the first store
  const int before = source.loads.load();
  EXPECT_EQ(load(sample, 16).value().size(), 256u);  // another shape is another entry
  EXPECT_EQ(source.loads.load(), before + 1);
  // A replaced file (another size) is decoded again.
  const std::string key = PixelCacheKey(sample, PixelShape::Square(8));
  std::ofstream(sample.path, std::ios::app) << " and more";
  EXPECT_NE(PixelCacheKey(sample, PixelShape::Square(8)), key);
  ASSERT_TRUE(load(sample, 8).ok());
  EXPECT_EQ(source.loads.load(), before + 2);
  // Failures are not cached.
  Sample bad = sample;
  bad.image_id = "bad";
  EXPECT_FALSE(load(bad, 8).ok());
  EXPECT_FALSE(load(bad, 8).ok());
  EXPECT_EQ(source.loads.load(), before + 4);
}

}  // namespace
}  // namespace fl
