#include "client/grpc_link.h"

#include <chrono>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "common/transport/grpc_status.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "common/transport/upload.h"
#include "fl/federation.grpc.pb.h"

namespace fl {
namespace {

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

class GrpcConnection : public CoordinatorConnection {
 public:
  explicit GrpcConnection(std::shared_ptr<grpc::Channel> channel)
      : channel_(std::move(channel)), stub_(Federation::NewStub(channel_)) {}

  absl::StatusOr<JoinResponse> Join(const JoinRequest& request) override {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(15));
    JoinResponse response;
    RETURN_IF_ERROR(FromGrpcStatus(stub_->Join(&ctx, request, &response)));
    return response;
  }

  bool NextTask(Task* task) override {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return false;
      if (tasks_ == nullptr) tasks_ = stub_->Tasks(&tasks_ctx_, TaskRequest());
    }
    return tasks_->Read(task);
  }

  absl::Status FinishTasks() override {
    if (tasks_ == nullptr) return absl::UnavailableError("task stream never opened");
    return Annotate(FromGrpcStatus(tasks_->Finish()), "task stream");
  }

  void CancelTasks() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    tasks_ctx_.TryCancel();
  }

  absl::StatusOr<TensorList> Download(const DownloadRequest& request, uint64_t max_bytes) override {
    return ReceiveModel(*stub_, request, max_bytes);
  }

  absl::StatusOr<UploadResponse> Upload(const UploadHeader& header,
                                        std::shared_ptr<const TensorList> update) override {
    grpc::ClientContext ctx;
    return SendUpload(channel_, ctx, header, std::move(update), kUploadChunkBytes);
  }

  absl::Status Report(const MetricsReport& report) override {
    return CallUnary(&Federation::Stub::Report, report, 30, "report");
  }

  absl::Status Decline(const DeclineRequest& request) override {
    return CallUnary(&Federation::Stub::Decline, request, 30, "decline");
  }

  // Short: a progress message is worth little once late, and training waits for it.
  absl::Status Progress(const ProgressRequest& request) override {
    return CallUnary(&Federation::Stub::Progress, request, 3, "progress");
  }

 private:
  // A unary call answered with an Ack, given `seconds` to complete.
  template <typename Request>
  absl::Status CallUnary(grpc::Status (Federation::Stub::*method)(grpc::ClientContext*,
                                                                  const Request&, Ack*),
                         const Request& request, int seconds, const char* what) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(seconds));
    Ack ack;
    return Annotate(FromGrpcStatus((stub_.get()->*method)(&ctx, request, &ack)), what);
  }

  const std::shared_ptr<grpc::Channel> channel_;
  const std::unique_ptr<Federation::Stub> stub_;
  grpc::ClientContext tasks_ctx_;
  std::unique_ptr<grpc::ClientReader<Task>> tasks_;  // set once, by the daemon's thread
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

Connector GrpcConnector(std::string address, std::string coordinator_name,
                        CertificateProvider tls) {
  return [address = std::move(address), name = std::move(coordinator_name),
          tls = std::move(tls)]() -> std::unique_ptr<CoordinatorConnection> {
    return std::make_unique<GrpcConnection>(MakeChannel(address, name, tls));
  };
}

}  // namespace fl
