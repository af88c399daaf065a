// Lightweight simulated sites for `fl-bench load`: each speaks the real Federation service over
// its own mutual-TLS channel with its own site certificate, the way fl-client does (join, one
// long-lived task stream, download, report, upload), but generates its update instead of
// training, so hundreds fit in one process.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "common/tensor_stream.h"
#include "common/transport/tls.h"
#include "fl/federation.grpc.pb.h"

namespace fl::bench {

// Seconds on a monotonic clock shared by every thread of the process.
double MonotonicSeconds();

// What the simulated sites measured. Every method is thread-safe.
class LoadStats {
 public:
  // Adds one latency sample, in seconds, of the operation `kind` ("join", "download", ...).
  void Add(const std::string& kind, double seconds);
  // Records that a site received its task for `round` at MonotonicSeconds() `at`.
  void TaskArrived(uint32_t round, double at);
  // Keeps the first failure; later ones are dropped.
  void Fail(const absl::Status& status);
  // When the job was submitted (the start of each site's time-to-first-task).
  void SetSubmitTime(double at);
  double submit_time() const;

  absl::Status first_error() const;
  std::map<std::string, std::vector<double>> samples() const;
  // Earliest task arrival per round.
  std::map<uint32_t, double> first_arrivals() const;
  // Parameters (float32 elements) of the model the sites downloaded; 0 before any download.
  uint64_t model_params() const { return model_params_; }
  void SetModelParams(uint64_t params) { model_params_ = params; }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::vector<double>> samples_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, double> first_arrival_ ABSL_GUARDED_BY(mu_);
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  double submit_time_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> model_params_{0};
};

struct SimSiteOptions {
  std::string name;                 // the CN of its certificate, as the coordinator must see it
  std::string address;              // coordinator host:port
  std::string server_name;          // CN/SAN of the coordinator's certificate
  TlsMaterial tls;                  // this site's own certificate and key
  std::vector<std::string> labels;  // findings it declares at Join
  uint32_t seed = 0;                // varies its generated updates and sample counts
};

// One simulated site. Connect and Serve run on one thread; Stop may be called from any.
class SimSite {
 public:
  SimSite(SimSiteOptions options, LoadStats* stats);

  // Opens the channel (TLS handshake), joins, and opens the task stream.
  absl::Status Connect();
  // Answers tasks until the job's final evaluation is reported (OK), the stream ends, or Stop().
  absl::Status Serve();
  // Cancels the task stream; Serve returns soon after (in-flight calls end at their deadlines).
  void Stop();

 private:
  absl::Status HandleTask(const Task& task);
  absl::Status Download(const Task& task);
  absl::Status Upload(const Task& task);
  absl::Status Report(const Task& task);

  const SimSiteOptions options_;
  LoadStats* const stats_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Federation::Stub> stub_;
  grpc::ClientContext stream_ctx_;
  std::unique_ptr<grpc::ClientReader<Task>> stream_;
  std::vector<TensorMeta> metas_;  // the model as last downloaded
  bool got_first_task_ = false;
};

}  // namespace fl::bench
