// Thin gRPC layer of the coordinator: converts messages and statuses, takes the caller's
// identity from its certificate and checks its role; all logic is in Coordinator.
#pragma once

#include "fl/federation.grpc.pb.h"
#include "server/coordinator.h"

namespace fl {

class FederationService final : public Federation::Service {
 public:
  explicit FederationService(Coordinator* core) : core_(core) {}
  grpc::Status Join(grpc::ServerContext* ctx, const JoinRequest* request,
                    JoinResponse* response) override;
  grpc::Status Tasks(grpc::ServerContext* ctx, const TaskRequest* request,
                     grpc::ServerWriter<Task>* writer) override;
  grpc::Status Decline(grpc::ServerContext* ctx, const DeclineRequest* request,
                       Ack* response) override;
  grpc::Status Download(grpc::ServerContext* ctx, const DownloadRequest* request,
                        grpc::ServerWriter<TensorChunk>* writer) override;
  grpc::Status Upload(grpc::ServerContext* ctx, grpc::ServerReader<UploadMessage>* reader,
                      UploadResponse* response) override;
  grpc::Status Report(grpc::ServerContext* ctx, const MetricsReport* request,
                      Ack* response) override;

 private:
  Coordinator* core_;
};

class AdminService final : public Admin::Service {
 public:
  explicit AdminService(Coordinator* core) : core_(core) {}
  grpc::Status SubmitJob(grpc::ServerContext* ctx, const SubmitJobRequest* request,
                         JobStatus* response) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const ListJobsRequest* request,
                        ListJobsResponse* response) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const JobRef* request,
                      JobStatus* response) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const JobRef* request,
                         JobStatus* response) override;
  grpc::Status ListSites(grpc::ServerContext* ctx, const ListSitesRequest* request,
                         ListSitesResponse* response) override;
  grpc::Status ExportModel(grpc::ServerContext* ctx, const ExportRequest* request,
                           grpc::ServerWriter<FileChunk>* writer) override;

 private:
  Coordinator* core_;
};

}  // namespace fl
