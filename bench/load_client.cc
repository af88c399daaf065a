#include "bench/load_client.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "bench/bench_model.h"
#include "common/transport/grpc_status.h"
#include "common/status.h"
#include "common/transport/upload.h"

namespace fl::bench {
namespace {

constexpr int kConnectSeconds = 120;
constexpr int kControlSeconds = 120;   // Join, Report
constexpr int kTransferSeconds = 900;  // Download, Upload of the whole model
constexpr uint64_t kMaxModelBytes = uint64_t{4} << 30;
constexpr uint64_t kDeclaredImages = 100;  // the simulated site's images, declared at Join

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

// Elapsed seconds since `start` (MonotonicSeconds()).
double Since(double start) { return MonotonicSeconds() - start; }

}  // namespace

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void LoadStats::Add(const std::string& kind, double seconds) {
  absl::MutexLock lock(&mu_);
  samples_[kind].push_back(seconds);
}

void LoadStats::TaskArrived(uint32_t round, double at) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = first_arrival_.emplace(round, at);
  if (!inserted && at < it->second) it->second = at;
}

void LoadStats::Fail(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  if (first_error_.ok()) first_error_ = status;
}

void LoadStats::SetSubmitTime(double at) {
  absl::MutexLock lock(&mu_);
  submit_time_ = at;
}

double LoadStats::submit_time() const {
  absl::MutexLock lock(&mu_);
  return submit_time_;
}

absl::Status LoadStats::first_error() const {
  absl::MutexLock lock(&mu_);
  return first_error_;
}

std::map<std::string, std::vector<double>> LoadStats::samples() const {
  absl::MutexLock lock(&mu_);
  return samples_;
}

std::map<uint32_t, double> LoadStats::first_arrivals() const {
  absl::MutexLock lock(&mu_);
  return first_arrival_;
}

SimSite::SimSite(SimSiteOptions options, LoadStats* stats)
    : options_(std::move(options)), stats_(stats) {}

absl::Status SimSite::Connect() {
  channel_ = MakeChannel(options_.address, options_.server_name, options_.tls);
  double start = MonotonicSeconds();
  if (!channel_->WaitForConnected(In(kConnectSeconds))) {
    return absl::UnavailableError(
        absl::StrCat("no connection to ", options_.address, " within ", kConnectSeconds, " s"));
  }
  stats_->Add("connect", Since(start));
  stub_ = Federation::NewStub(channel_);
  JoinRequest request;
  for (size_t i = 0; i < options_.labels.size(); ++i) {
    SiteLabel* label = request.add_labels();
    label->set_name(options_.labels[i]);
    label->set_positives(10 + i);
    label->set_negatives(90 - i);
  }
  request.set_num_images(kDeclaredImages);
  request.set_hardware("cpu:simulated");
  request.set_software_version("fl-bench-load");
  grpc::ClientContext ctx;
  ctx.set_deadline(In(kControlSeconds));
  JoinResponse response;
  start = MonotonicSeconds();
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(stub_->Join(&ctx, request, &response)), "join"));
  stats_->Add("join", Since(start));
  if (response.site_name() != options_.name) {
    return absl::InternalError(
        absl::StrCat("joined as '", response.site_name(), "' instead of '", options_.name, "'"));
  }
  stream_ = stub_->Tasks(&stream_ctx_, TaskRequest());
  return absl::OkStatus();
}

absl::Status SimSite::Serve() {
  Task task;
  while (stream_->Read(&task)) {
    if (task.job_id().empty()) continue;  // keepalive
    const double now = MonotonicSeconds();
    stats_->TaskArrived(task.round(), now);
    if (!got_first_task_) {
      stats_->Add("first_task", now - stats_->submit_time());
      got_first_task_ = true;
    }
    RETURN_IF_ERROR(Annotate(HandleTask(task), absl::StrCat("round ", task.round())));
    if (!task.evaluate_only()) continue;
    // The final evaluation is the site's last task of the job: leave as fl-client does.
    stream_ctx_.TryCancel();
    while (stream_->Read(&task)) {
    }
    stream_->Finish();  // CANCELLED, as asked
    return absl::OkStatus();
  }
  return Annotate(FromGrpcStatus(stream_->Finish()), "task stream ended before the job did");
}

void SimSite::Stop() { stream_ctx_.TryCancel(); }

absl::Status SimSite::HandleTask(const Task& task) {
  RETURN_IF_ERROR(Download(task));
  if (task.evaluate_only() || task.round() > 0) RETURN_IF_ERROR(Report(task));
  if (task.evaluate_only()) return absl::OkStatus();
  return Upload(task);
}

absl::Status SimSite::Download(const Task& task) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(kTransferSeconds));
  DownloadRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  const double start = MonotonicSeconds();
  std::unique_ptr<grpc::ClientReader<TensorChunk>> reader = stub_->Download(&ctx, request);
  // Every chunk is validated as fl-client does (order, shapes, finiteness, CRC-32C); the
  // values are not kept, which is what keeps a simulated site light.
  ChunkReader chunks(std::nullopt, kMaxModelBytes);
  const ChunkReader::Sink drop = [](size_t, uint64_t, const float*, size_t) {
    return absl::OkStatus();
  };
  absl::Status valid;
  TensorChunk chunk;
  while (reader->Read(&chunk)) {
    valid = chunks.Add(chunk, drop);
    if (!valid.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  const absl::Status finish = FromGrpcStatus(reader->Finish());
  RETURN_IF_ERROR(Annotate(valid, "download"));
  RETURN_IF_ERROR(Annotate(finish, "download"));
  RETURN_IF_ERROR(Annotate(chunks.Finish(), "download"));
  stats_->Add("download", Since(start));
  metas_ = chunks.metas();
  stats_->SetModelParams(chunks.bytes() / sizeof(float));
  return absl::OkStatus();
}

absl::Status SimSite::Upload(const Task& task) {
  UploadHeader header;
  header.set_job_id(task.job_id());
  header.set_round(task.round());
  // A train split within the images declared at Join (the coordinator's bound).
  header.set_num_samples(1 + options_.seed % kDeclaredImages);
  for (const std::string& label : task.train_labels()) header.add_labels(label);
  header.set_num_tensors(static_cast<uint32_t>(metas_.size()));
  header.set_train_loss(0.5 + 0.001 * (options_.seed % 100));
  grpc::ClientContext ctx;
  ctx.set_deadline(In(kTransferSeconds));
  const double start = MonotonicSeconds();
  // Label mode: an update carries every tensor of the model, in model order, so the shapes
  // of the download are the layout of the upload.
  ASSIGN_OR_RETURN(
      const UploadResponse response, SendUpload(channel_, ctx, header, [&](const auto& emit) {
        return StreamGeneratedUpdate(
            metas_, options_.seed * 131 + task.round(), kUploadChunkBytes,
            [&](const TensorChunk& c) {
              return emit(c) ? absl::OkStatus() : absl::CancelledError("upload stream closed");
            });
      }));
  uint64_t bytes = 0;
  for (const TensorMeta& m : metas_) bytes += m.byte_size();
  if (response.bytes_received() != bytes) {
    return absl::InternalError(absl::StrCat("upload: coordinator received ",
                                            response.bytes_received(), " bytes of ", bytes));
  }
  stats_->Add("upload", Since(start));
  return absl::OkStatus();
}

absl::Status SimSite::Report(const Task& task) {
  MetricsReport report;
  report.set_job_id(task.job_id());
  report.set_round(task.round());
  report.set_train_loss(0.5);
  report.set_test_images(20);
  for (int i = 0; i < task.train_labels_size(); ++i) {
    LabelMetric* metric = report.add_test();
    metric->set_label(task.train_labels(i));
    metric->set_auroc(0.5 + 0.001 * ((options_.seed + i) % 400));
    metric->set_positives(2);
    metric->set_negatives(18);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(In(kControlSeconds));
  Ack ack;
  const double start = MonotonicSeconds();
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(stub_->Report(&ctx, report, &ack)), "report"));
  stats_->Add("report", Since(start));
  return absl::OkStatus();
}

}  // namespace fl::bench
