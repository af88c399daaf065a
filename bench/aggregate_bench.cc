// fl-bench aggregate: how close the coordinator's fold comes to memory
// bandwidth, and how much memory folding many updates takes relative to the
// model.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "bench/bench_model.h"
#include "bench/bench_util.h"
#include "bench/benches.h"
#include "common/status.h"
#include "server/aggregator.h"

namespace fl::bench {
namespace {

constexpr size_t kChunkFloats = kDefaultChunkBytes / sizeof(float);

// Calls `fn(index, element_offset, data, n)` for each 1 MiB piece of `tensors`.
template <typename Fn>
void ForEachChunk(const TensorList& tensors, Fn&& fn) {
  for (size_t k = 0; k < tensors.size(); ++k) {
    const std::vector<float>& data = tensors[k].data;
    for (size_t off = 0; off < data.size(); off += kChunkFloats) {
      fn(k, off, data.data() + off, std::min(kChunkFloats, data.size() - off));
    }
  }
}

// Label-mode layout of the bench model: everything shared, "fc." tensors are
// heads.
UpdateLayout BenchLayout(const std::vector<TensorMeta>& metas) {
  TensorList shapes_only;
  for (const TensorMeta& m : metas) shapes_only.push_back({m.name, m.shape, {}});
  return MakeLayout(shapes_only, kHeadPrefix, HEAD_MODE_LABEL, kBenchLabels);
}

// Label rows site `site` trains: two of the eight, varying with the site.
std::vector<size_t> SiteLabelRows(uint32_t site) {
  return {site % kBenchLabels, (site + 3) % kBenchLabels};
}

// Validates one chunk stream with ChunkReader and folds it into `aggregator` as
// one update.
absl::Status FoldValidated(
    Aggregator& aggregator, uint32_t site,
    const std::function<absl::Status(const std::function<absl::Status(const TensorChunk&)>&)>&
        stream) {
  ChunkReader reader(aggregator.layout().shared);
  const ChunkReader::Sink sink = [&](size_t index, uint64_t offset, const float* data, size_t n) {
    return aggregator.Fold(index, offset, data, n);
  };
  RETURN_IF_ERROR(aggregator.BeginUpdate(100 + site, SiteLabelRows(site)));
  RETURN_IF_ERROR(stream([&](const TensorChunk& chunk) { return reader.Add(chunk, sink); }));
  RETURN_IF_ERROR(reader.Finish());
  aggregator.EndUpdate();
  return absl::OkStatus();
}

// Peak RSS growth while folding `sites` generated updates and applying them,
// over model size. Must run before anything large is allocated: VmHWM is the
// process's lifetime peak.
absl::StatusOr<double> PeakMemoryModelRatio(const std::vector<TensorMeta>& metas, int64_t sites) {
  ASSIGN_OR_RETURN(const uint64_t before, ProcStatusBytes("VmRSS"));
  TensorList global = MakeBenchTensors(metas, 0);
  Aggregator aggregator(BenchLayout(metas), kBenchLabels);
  for (int64_t s = 1; s <= sites; ++s) {
    const uint32_t site = static_cast<uint32_t>(s);
    RETURN_IF_ERROR(FoldValidated(aggregator, site, [&](const auto& emit) {
      return StreamGeneratedUpdate(metas, site, kDefaultChunkBytes, emit);
    }));
  }
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(1.0);
  RETURN_IF_ERROR(aggregator.Apply(fedavg, global, nullptr));
  ASSIGN_OR_RETURN(const uint64_t peak, ProcStatusBytes("VmHWM"));
  uint64_t model_bytes = 0;
  for (const TensorMeta& m : metas) model_bytes += m.byte_size();
  std::printf("memory: RSS before %.1f MiB, peak %.1f MiB after %lld updates + Apply\n",
              static_cast<double>(before) / kMib, static_cast<double>(peak) / kMib,
              static_cast<long long>(aggregator.updates()));
  return static_cast<double>(peak > before ? peak - before : 0) / model_bytes;
}

struct FoldTimes {
  double memcpy_s, float_fold_s, fold_s, validated_s;
};

// Best-of times for copying, folding and validating+folding one in-memory
// update.
absl::StatusOr<FoldTimes> TimeFold(const std::vector<TensorMeta>& metas) {
  const TensorList update = MakeBenchTensors(metas, 1);
  Aggregator aggregator(BenchLayout(metas), kBenchLabels);
  size_t total_floats = 0;
  for (const NamedTensor& t : update) total_floats += t.data.size();
  std::vector<float> destination(total_floats, 0.0f);

  FoldTimes times{};
  ASSIGN_OR_RETURN(times.memcpy_s, BestOf(15, [&] {
                     size_t at = 0;
                     ForEachChunk(update, [&](size_t, size_t, const float* data, size_t n) {
                       std::memcpy(destination.data() + at, data, n * sizeof(float));
                       at += n;
                     });
                     return absl::OkStatus();
                   }));
  // The order-dependent float fold of earlier versions (backbone and head alike), as the
  // baseline of the exact one.
  std::fill(destination.begin(), destination.end(), 0.0f);
  ASSIGN_OR_RETURN(times.float_fold_s, BestOf(15, [&] {
                     size_t at = 0;
                     ForEachChunk(update, [&](size_t, size_t, const float* data, size_t n) {
                       AxpyFloat(100.0f, data, destination.data() + at, n);
                       at += n;
                     });
                     return absl::OkStatus();
                   }));
  ASSIGN_OR_RETURN(times.fold_s, BestOf(15, [&] {
                     RETURN_IF_ERROR(aggregator.BeginUpdate(100, SiteLabelRows(1)));
                     absl::Status folded;
                     ForEachChunk(update,
                                  [&](size_t index, size_t offset, const float* data, size_t n) {
                                    if (folded.ok())
                                      folded = aggregator.Fold(index, offset, data, n);
                                  });
                     aggregator.EndUpdate();
                     return folded;
                   }));
  ASSIGN_OR_RETURN(
      times.validated_s, BestOf(5, [&] {
        return FoldValidated(aggregator, 1, [&](const auto& emit) {
          absl::Status failed;
          RETURN_IF_ERROR(WriteTensorChunks(update, kDefaultChunkBytes, [&](const TensorChunk& c) {
            failed = emit(c);
            return failed.ok();
          }));
          return failed;
        });
      }));
  return times;
}

absl::Status RunAggregateBench(const std::vector<int64_t>& flags) {
  const std::vector<TensorMeta> metas = BenchModelMetas(flags[0]);
  const uint64_t bytes = static_cast<uint64_t>(flags[0]) * kMib;
  std::printf(
      "model: %lld MiB (backbone + [8, 1024] label head), %lld sites, "
      "1 MiB chunks\n",
      static_cast<long long>(flags[0]), static_cast<long long>(flags[1]));
  ASSIGN_OR_RETURN(const double memory_ratio, PeakMemoryModelRatio(metas, flags[1]));
  ASSIGN_OR_RETURN(const FoldTimes t, TimeFold(metas));
  std::printf("memcpy:          %8.1f MiB/s (best of 15)\n", MibPerSecond(bytes, t.memcpy_s));
  std::printf("float fold:      %8.1f MiB/s (best of 15; the order-dependent fold of before)\n",
              MibPerSecond(bytes, t.float_fold_s));
  std::printf("fold:            %8.1f MiB/s (best of 15; exact fixed point, 64-bit words)\n",
              MibPerSecond(bytes, t.fold_s));
  std::printf(
      "validated fold:  %8.1f MiB/s (best of 5; WriteTensorChunks -> "
      "ChunkReader -> Fold)\n",
      MibPerSecond(bytes, t.validated_s));
  PrintKeyValues({{"aggregate_ratio", t.memcpy_s / t.fold_s},
                  {"exact_over_float_fold_ratio", t.fold_s / t.float_fold_s},
                  {"validated_ratio", t.memcpy_s / t.validated_s},
                  {"peak_memory_model_ratio", memory_ratio}});
  return absl::OkStatus();
}

}  // namespace

BenchRun SetUpAggregateBench(CLI::App& app) {
  auto flags = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{64, 20});
  app.add_option("--mib", (*flags)[0], "model size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--sites", (*flags)[1], "sites folded, for the peak memory")
      ->check(CLI::PositiveNumber);
  return [flags] { return RunAggregateBench(*flags); };
}

}  // namespace fl::bench
