// Writes the seed corpora of the fuzz targets (checked in under tests/fuzz/corpus/):
//   fuzz_seed_gen <corpus folder>
// Seeds are valid inputs (and a few near misses), so the fuzzer starts from deep in each parser.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "common/tensor_stream.h"
#include "fl/federation.pb.h"

namespace fl {
namespace {

bool WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  out.close();
  if (!out) std::fprintf(stderr, "cannot write %s\n", path.c_str());
  return static_cast<bool>(out);
}

// The update decoder's framing: a flags byte, then 2-byte length + UploadMessage records.
class UploadInput {
 public:
  explicit UploadInput(uint8_t flags) : bytes_(1, static_cast<char>(flags)) {}
  void Add(const UploadMessage& message) {
    const std::string record = message.SerializeAsString();
    bytes_.push_back(static_cast<char>(record.size() & 0xff));
    bytes_.push_back(static_cast<char>(record.size() >> 8));
    bytes_ += record;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

TensorList MakeTensors(const std::vector<TensorMeta>& metas) {
  TensorList tensors;
  float v = 0.25f;
  for (const TensorMeta& m : metas) {
    NamedTensor t{m.name, m.shape, std::vector<float>(m.byte_size() / sizeof(float))};
    for (float& x : t.data) x = (v = -v * 1.5f + 0.125f);
    tensors.push_back(std::move(t));
  }
  return tensors;
}

// A whole upload (header, chunks, trailer) of `tensors`, optionally cut after `keep` chunks.
std::string Upload(const TensorList& tensors, size_t chunk_bytes, uint8_t flags,
                   size_t keep = SIZE_MAX) {
  UploadInput input(flags);
  UploadMessage message;
  message.mutable_header()->set_job_id("job-1");
  message.mutable_header()->set_num_samples(10);
  message.mutable_header()->set_num_tensors(static_cast<uint32_t>(tensors.size()));
  input.Add(message);
  size_t emitted = 0;
  (void)WriteTensorChunks(tensors, chunk_bytes, [&](const TensorChunk& chunk) {
    if (emitted++ >= keep) return false;
    *message.mutable_chunk() = chunk;
    input.Add(message);
    return true;
  });
  message.mutable_trailer();
  if (keep == SIZE_MAX) input.Add(message);
  return input.bytes();
}

bool WriteUpdateSeeds(const std::string& dir) {
  // Must match ModelLayout() in fuzz_update_decoder.cc.
  const TensorList model = MakeTensors({{"conv.weight", {4, 1, 3, 3}},
                                        {"conv.bias", {4}},
                                        {"bn.num_batches", {}},
                                        {"empty", {0, 3}},
                                        {"head.weight", {2, 4}}});
  const TensorList other = MakeTensors({{"a", {3}}, {"b.weight", {2, 2, 2}}});
  TensorList bad = MakeTensors({{"a", {3}}});
  bad[0].data[1] = 1.0f / 0.0f;  // non-finite value, refused
  bool ok = WriteFile(dir + "/model_whole", Upload(model, 1 << 20, 0));
  ok &= WriteFile(dir + "/model_chunks_16", Upload(model, 16, 0));
  ok &= WriteFile(dir + "/model_chunks_4_fixcrc", Upload(model, 4, 1));
  ok &= WriteFile(dir + "/model_truncated", Upload(model, 16, 0, 3));
  ok &= WriteFile(dir + "/other_layout", Upload(other, 8, 0));
  ok &= WriteFile(dir + "/non_finite", Upload(bad, 8, 1));
  return ok;
}

constexpr char kCoordinator[] = R"(listen_address: "0.0.0.0:7443"
state_dir: "/var/lib/fl"
tls { ca_file: "ca.pem" cert_file: "coordinator.pem" key_file: "coordinator.key" }
metrics_address: "127.0.0.1:9100"
chunk_bytes: 1048576
site_timeout_seconds: 30
)";
constexpr char kClient[] = R"(coordinator_address: "coordinator.example:7443"
coordinator_name: "coordinator"
tls { ca_file: "ca.pem" cert_file: "site.pem" key_file: "site.key" }
data_dir: "/data/dicom"
labels_csv: "/data/labels.csv"
state_dir: "/var/lib/fl-client"
device: "cpu"
budget { max_epsilon: 8 delta: 1e-5 }
test_fraction: 0.2
loader_threads: 2
)";
constexpr char kAdmin[] = R"(coordinator_address: "localhost:7443"
tls { ca_file: "ca.pem" cert_file: "admin.pem" key_file: "admin.key" }
)";
constexpr char kJob[] = R"(name: "chest-xray"
model: "smallcnn"
labels: ["effusion", "nodule", "pneumonia"]
image_size: 64
rounds: 5
min_sites: 2
local_steps: 10
batch_size: 16
local_optimizer { name: "adam" learning_rate: 0.001 }
server_optimizer { kind: FEDADAM learning_rate: 0.01 }
dp { enabled: true clip_norm: 1.0 noise_multiplier: 1.1 delta: 1e-5 }
sites: ["site-a", "site-b"]
max_update_norm: 100
)";
constexpr char kJson[] =
    R"({"round": 3, "labels": ["a", "b\"\\\u00e9"], "sites": {"x": {"n": [1, 2, 3]}}})";

bool WriteConfigSeeds(const std::string& dir) {
  bool ok = WriteFile(dir + "/coordinator.textproto", kCoordinator);
  ok &= WriteFile(dir + "/client.textproto", kClient);
  ok &= WriteFile(dir + "/admin.textproto", kAdmin);
  ok &= WriteFile(dir + "/job.textproto", kJob);
  ok &= WriteFile(dir + "/report.json", kJson);
  const TensorList tensors = MakeTensors({{"w", {2, 3}}, {"b", {3}}, {"s", {}}, {"e", {0}}});
  absl::Status st =
      WriteSafetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}, {"round", "3"}});
  if (!st.ok()) std::fprintf(stderr, "%s\n", st.ToString().c_str());
  return ok && st.ok();
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus folder>\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  const std::string update = root + "/update_decoder", config = root + "/config_parser";
  for (const std::string& d : {root, update, config}) mkdir(d.c_str(), 0755);
  return fl::WriteUpdateSeeds(update) && fl::WriteConfigSeeds(config) ? 0 : 1;
}
