// Thin gRPC layer of the coordinator: converts messages and statuses, takes the caller's
// identity from its certificate and checks its role; all logic is in Coordinator.
#pragma once

#include <set>
#include <string>

#include "common/transport/tls.h"
#include "fl/federation.grpc.pb.h"
#include "server/coordinator.h"

namespace fl {

// Who may make a call: a verified certificate of the right role that is not revoked.
class Authorizer {
 public:
  explicit Authorizer(std::set<std::string> revoked_fingerprints)
      : revoked_(std::move(revoked_fingerprints)) {}
  // The caller's identity, or UNAUTHENTICATED / PERMISSION_DENIED saying why not.
  absl::StatusOr<Identity> Check(const grpc::ServerContext& ctx, Role role) const;
  // Replaces the revocation list (SHA-256 fingerprints) for every later check; returns whether
  // it changed. Open task streams of newly revoked certificates end within about a second.
  bool SetRevoked(std::set<std::string> revoked_fingerprints);
  bool IsRevoked(const std::string& fingerprint) const;

 private:
  mutable absl::Mutex mu_;
  std::set<std::string> revoked_ ABSL_GUARDED_BY(mu_);
};

class FederationService final : public Federation::Service {
 public:
  FederationService(Coordinator* core, const Authorizer* auth) : core_(core), auth_(auth) {}
  grpc::Status Join(grpc::ServerContext* ctx, const JoinRequest* request,
                    JoinResponse* response) override;
  grpc::Status Tasks(grpc::ServerContext* ctx, const TaskRequest* request,
                     grpc::ServerWriter<Task>* writer) override;
  grpc::Status Decline(grpc::ServerContext* ctx, const DeclineRequest* request,
                       Ack* response) override;
  grpc::Status Download(grpc::ServerContext* ctx, const DownloadRequest* request,
                        grpc::ServerWriter<TensorChunk>* writer) override;
  grpc::Status Upload(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<UploadReply, UploadMessage>* stream) override;
  grpc::Status Report(grpc::ServerContext* ctx, const MetricsReport* request,
                      Ack* response) override;
  grpc::Status Progress(grpc::ServerContext* ctx, const ProgressRequest* request,
                        Ack* response) override;

 private:
  Coordinator* core_;
  const Authorizer* auth_;
};

class AdminService final : public Admin::Service {
 public:
  AdminService(Coordinator* core, const Authorizer* auth) : core_(core), auth_(auth) {}
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
  const Authorizer* auth_;
};

}  // namespace fl
