#include "server/service.h"

#include "absl/strings/str_cat.h"
#include "common/transport/grpc_status.h"

namespace fl {
namespace {

template <typename T>
grpc::Status Reply(absl::StatusOr<T> result, T* response) {
  if (!result.ok()) return ToGrpcStatus(result.status());
  *response = std::move(result).value();
  return grpc::Status::OK;
}

}  // namespace

bool Authorizer::SetRevoked(std::set<std::string> revoked_fingerprints) {
  absl::MutexLock lock(&mu_);
  if (revoked_fingerprints == revoked_) return false;
  revoked_ = std::move(revoked_fingerprints);
  return true;
}

bool Authorizer::IsRevoked(const std::string& fingerprint) const {
  absl::MutexLock lock(&mu_);
  return revoked_.count(fingerprint) > 0;
}

absl::StatusOr<Identity> Authorizer::Check(const grpc::ServerContext& ctx, Role role) const {
  absl::StatusOr<Identity> who = PeerIdentity(ctx);
  if (!who.ok()) return who.status();
  if (IsRevoked(who->fingerprint)) {
    return absl::PermissionDeniedError(
        absl::StrCat("the certificate of '", who->name, "' is revoked"));
  }
  if (who->role != role) {
    return absl::PermissionDeniedError(absl::StrCat("this call needs a ", RoleName(role),
                                                    " certificate; caller '", who->name, "' is a ",
                                                    RoleName(who->role)));
  }
  return who;
}

#define FL_CALLER(ctx, role)                                 \
  absl::StatusOr<Identity> who = auth_->Check(*(ctx), role); \
  if (!who.ok()) return ToGrpcStatus(who.status())

grpc::Status FederationService::Join(grpc::ServerContext* ctx, const JoinRequest* request,
                                     JoinResponse* response) {
  FL_CALLER(ctx, Role::kSite);
  return Reply(core_->Join(*who, *request), response);
}

grpc::Status FederationService::Tasks(grpc::ServerContext* ctx, const TaskRequest*,
                                      grpc::ServerWriter<Task>* writer) {
  FL_CALLER(ctx, Role::kSite);
  absl::Status status = core_->StreamTasks(
      *who, [&](const Task& task) { return writer->Write(task); },
      [&] { return ctx->IsCancelled() || auth_->IsRevoked(who->fingerprint); });
  if (status.ok() && auth_->IsRevoked(who->fingerprint)) {
    status = absl::PermissionDeniedError(
        absl::StrCat("the certificate of '", who->name, "' was revoked"));
  }
  return ToGrpcStatus(status);
}

grpc::Status FederationService::Decline(grpc::ServerContext* ctx, const DeclineRequest* request,
                                        Ack*) {
  FL_CALLER(ctx, Role::kSite);
  return ToGrpcStatus(core_->Decline(*who, *request));
}

grpc::Status FederationService::Download(grpc::ServerContext* ctx, const DownloadRequest* request,
                                         grpc::ServerWriter<TensorChunk>* writer) {
  FL_CALLER(ctx, Role::kSite);
  return ToGrpcStatus(core_->Download(
      *who, *request, [&](const TensorChunk& chunk) { return writer->Write(chunk); },
      [&] { return ctx->IsCancelled(); }));
}

grpc::Status FederationService::Upload(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<UploadReply, UploadMessage>* stream) {
  FL_CALLER(ctx, Role::kSite);
  UploadReply reply;
  reply.mutable_grant();
  absl::StatusOr<UploadResponse> done = core_->Upload(
      *who, {[&](UploadMessage* m) { return stream->Read(m); },
             [&] { return stream->Write(reply); }, [&] { return ctx->IsCancelled(); }});
  if (!done.ok()) return ToGrpcStatus(done.status());
  *reply.mutable_done() = *std::move(done);
  stream->Write(reply);
  return grpc::Status::OK;
}

grpc::Status FederationService::Report(grpc::ServerContext* ctx, const MetricsReport* request,
                                       Ack*) {
  FL_CALLER(ctx, Role::kSite);
  return ToGrpcStatus(core_->Report(*who, *request));
}

grpc::Status FederationService::Progress(grpc::ServerContext* ctx, const ProgressRequest* request,
                                         Ack*) {
  FL_CALLER(ctx, Role::kSite);
  return ToGrpcStatus(core_->Progress(*who, *request));
}

grpc::Status AdminService::SubmitJob(grpc::ServerContext* ctx, const SubmitJobRequest* request,
                                     JobStatus* response) {
  FL_CALLER(ctx, Role::kAdmin);
  return Reply(core_->SubmitJob(*who, request->spec()), response);
}

grpc::Status AdminService::ListJobs(grpc::ServerContext* ctx, const ListJobsRequest*,
                                    ListJobsResponse* response) {
  FL_CALLER(ctx, Role::kAdmin);
  for (JobStatus& job : core_->ListJobs()) *response->add_jobs() = std::move(job);
  return grpc::Status::OK;
}

grpc::Status AdminService::GetJob(grpc::ServerContext* ctx, const JobRef* request,
                                  JobStatus* response) {
  FL_CALLER(ctx, Role::kAdmin);
  return Reply(core_->GetJob(request->job_id()), response);
}

grpc::Status AdminService::CancelJob(grpc::ServerContext* ctx, const JobRef* request,
                                     JobStatus* response) {
  FL_CALLER(ctx, Role::kAdmin);
  return Reply(core_->CancelJob(*who, request->job_id()), response);
}

grpc::Status AdminService::ListSites(grpc::ServerContext* ctx, const ListSitesRequest*,
                                     ListSitesResponse* response) {
  FL_CALLER(ctx, Role::kAdmin);
  for (SiteInfo& site : core_->ListSites()) *response->add_sites() = std::move(site);
  return grpc::Status::OK;
}

grpc::Status AdminService::ExportModel(grpc::ServerContext* ctx, const ExportRequest* request,
                                       grpc::ServerWriter<FileChunk>* writer) {
  FL_CALLER(ctx, Role::kAdmin);
  return ToGrpcStatus(
      core_->ExportModel(*who, request->job_id(), request->best(),
                         [&](const FileChunk& chunk) { return writer->Write(chunk); }));
}

}  // namespace fl
