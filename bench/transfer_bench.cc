// fl-bench transfer: upload throughput of an update over gRPC with mutual TLS,
// against a plain OpenSSL TLS 1.3 socket moving the same bytes on the same
// loopback in the same run.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "absl/strings/str_cat.h"
#include "bench/bench_model.h"
#include "bench/bench_util.h"
#include "bench/benches.h"
#include "bench/tls_socket.h"
#include "common/transport/grpc_status.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/transport/tls.h"
#include "common/transport/upload.h"
#include "common/x509.h"
#include "fl/federation.grpc.pb.h"

namespace fl::bench {
namespace {

constexpr int kRepetitions = 3;
constexpr int kSessions = 5;

// The header's job_id of uploads the server does not validate.
constexpr char kUncheckedJob[] = "unchecked";

// The coordinator's transfers without a job around them. Upload reads a whole upload and,
// unless its job_id is kUncheckedJob, checks every chunk as the coordinator does (order, shapes,
// finiteness, CRC-32C); the data itself is dropped. Download streams `model` as the
// coordinator streams a global model (FederationService::Download).
class TransferService final : public Federation::Service {
 public:
  TransferService(std::vector<TensorMeta> metas, TensorList model)
      : metas_(std::move(metas)), model_(std::move(model)) {}

  grpc::Status Download(grpc::ServerContext*, const DownloadRequest*,
                        grpc::ServerWriter<TensorChunk>* writer) override {
    return ToGrpcStatus(WriteTensorChunks(model_, kDefaultChunkBytes,
                                          [&](const TensorChunk& c) { return writer->Write(c); }));
  }

  grpc::Status Upload(grpc::ServerContext*,
                      grpc::ServerReaderWriter<UploadReply, UploadMessage>* stream) override {
    UploadReply reply;
    absl::Status status = ReadUpload(*stream, *reply.mutable_done());
    if (status.ok()) stream->Write(reply);
    return ToGrpcStatus(status);
  }

 private:
  absl::Status ReadUpload(grpc::ServerReaderWriter<UploadReply, UploadMessage>& reader,
                          UploadResponse& response) {
    UploadMessage message;
    if (!reader.Read(&message) || !message.has_header()) {
      return absl::InvalidArgumentError("upload must start with a header");
    }
    const bool validate = message.header().job_id() != kUncheckedJob;
    UploadReply grant;
    grant.mutable_grant();
    if (!reader.Write(grant)) return absl::CancelledError("the client went away");
    ChunkReader chunks(metas_);
    const ChunkReader::Sink drop = [](size_t, uint64_t, const float*, size_t) {
      return absl::OkStatus();
    };
    bool trailer = false;
    uint64_t unchecked_bytes = 0;
    while (reader.Read(&message)) {
      if (message.has_chunk() && !validate) {
        unchecked_bytes += message.chunk().data().size();
      } else if (message.has_chunk()) {
        RETURN_IF_ERROR(chunks.Add(message.chunk(), drop));
      } else if (message.has_trailer()) {
        trailer = true;
      }
    }
    if (!trailer) return absl::InvalidArgumentError("upload ended without a trailer");
    if (!validate) {
      response.set_bytes_received(unchecked_bytes);
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(chunks.Finish());
    response.set_bytes_received(chunks.bytes());
    return absl::OkStatus();
  }

  const std::vector<TensorMeta> metas_;
  const TensorList model_;
};

struct Pki {
  TlsMaterial coordinator, site;
};

// A fresh CA with a coordinator and a site certificate for localhost /
// 127.0.0.1.
absl::StatusOr<Pki> MakePki() {
  ASSIGN_OR_RETURN(const KeyAndCert ca, CreateCa("fl-bench CA", 1));
  Pki pki;
  for (auto [role, material] :
       {std::pair<const char*, TlsMaterial*>{"coordinator", &pki.coordinator},
        {"site", &pki.site}}) {
    CertRequest request{role, role, {"localhost"}, {"127.0.0.1"}, 1};
    ASSIGN_OR_RETURN(const KeyAndCert issued, IssueCert(ca, request));
    *material = {ca.cert_pem, issued.cert_pem, issued.key_pem};
  }
  return pki;
}

// How the client hands an in-memory update to gRPC.
enum class SendPath {
  kBorrowed,  // chunk messages reference the update's bytes (fl-client's path)
  kCopied,    // each chunk is copied into a protobuf message first
};

// One upload of `update`: header, chunks of `chunk_bytes`, trailer; checks that
// the server got every byte.
absl::Status UploadOnce(const std::shared_ptr<grpc::Channel>& channel,
                        const std::shared_ptr<const TensorList>& update, uint64_t bytes,
                        size_t chunk_bytes, bool validate, SendPath path) {
  UploadHeader header;
  header.set_job_id(validate ? "bench" : kUncheckedJob);
  header.set_num_samples(100);
  header.set_num_tensors(static_cast<uint32_t>(update->size()));
  grpc::ClientContext context;
  absl::StatusOr<UploadResponse> response =
      path == SendPath::kBorrowed ? SendUpload(channel, context, header, update, chunk_bytes)
                                  : SendUpload(channel, context, header, [&](const auto& emit) {
                                      return WriteTensorChunks(*update, chunk_bytes, emit);
                                    });
  RETURN_IF_ERROR(response.status());
  if (response->bytes_received() != bytes) {
    return absl::InternalError(
        absl::StrCat("server received ", response->bytes_received(), " bytes of ", bytes));
  }
  return absl::OkStatus();
}

// The server runs in a child process, as the coordinator does: in one process gRPC's
// client and server would share pollers and threads, which a deployment never does.
class ServerProcess {
 public:
  // Forks the server; must be called before this process first uses gRPC.
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(
      const Pki& pki, const std::vector<TensorMeta>& metas) {
    int port_pipe[2], stop_pipe[2];
    if (pipe(port_pipe) != 0) return absl::InternalError("pipe failed");
    if (pipe(stop_pipe) != 0) {
      close(port_pipe[0]);
      close(port_pipe[1]);
      return absl::InternalError("pipe failed");
    }
    std::fflush(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return absl::InternalError("fork failed");
    if (pid == 0) {
      close(port_pipe[0]);
      close(stop_pipe[1]);
      _exit(Serve(pki, metas, port_pipe[1], stop_pipe[0]));
    }
    close(port_pipe[1]);
    close(stop_pipe[0]);
    auto process = std::unique_ptr<ServerProcess>(new ServerProcess(pid, stop_pipe[1]));
    int port = 0;
    const bool got = read(port_pipe[0], &port, sizeof port) == sizeof port && port > 0;
    close(port_pipe[0]);
    if (!got) return absl::InternalError("the gRPC server process did not start");
    process->port_ = port;
    return process;
  }
  ~ServerProcess() {
    close(stop_fd_);  // the child shuts down when it reads end of file
    waitpid(pid_, nullptr, 0);
  }
  int port() const { return port_; }

 private:
  ServerProcess(pid_t pid, int stop_fd) : pid_(pid), stop_fd_(stop_fd) {}

  // The child: serves transfers until `stop_fd` closes.
  static int Serve(const Pki& pki, const std::vector<TensorMeta>& metas, int port_fd, int stop_fd) {
    ReturnFreedModels();  // as fl-coordinator does
    TransferService service(metas, MakeBenchTensors(metas, 2));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(pki.coordinator), &port);
    ConfigureServerBuilder(builder);  // the coordinator's transport settings
    builder.RegisterService(&service);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr) port = 0;
    if (write(port_fd, &port, sizeof port) != sizeof port || port == 0) return 1;
    char byte;
    while (read(stop_fd, &byte, 1) > 0) {
    }
    server->Shutdown();
    return 0;
  }

  const pid_t pid_;
  const int stop_fd_;
  int port_ = 0;
};

// Best-of time for one upload over a connected mutual-TLS channel to the server process; the
// server validates the chunks unless the header's job_id is kUncheckedJob.
absl::StatusOr<double> TimeGrpc(const Pki& pki, int port,
                                const std::shared_ptr<const TensorList>& update, uint64_t bytes,
                                size_t chunk_bytes, bool validate, SendPath path) {
  auto channel = MakeChannel(absl::StrCat("127.0.0.1:", port), "localhost", pki.site);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
    return absl::UnavailableError("mutual TLS channel did not connect");
  }
  return BestOf(kRepetitions,
                [&] { return UploadOnce(channel, update, bytes, chunk_bytes, validate, path); });
}

// Best-of time for one download of the server's model as fl-client receives it (ReceiveModel:
// every chunk checked and assembled into tensors).
absl::StatusOr<double> TimeDownload(const Pki& pki, int port, uint64_t bytes) {
  auto channel = MakeChannel(absl::StrCat("127.0.0.1:", port), "localhost", pki.site);
  std::unique_ptr<Federation::Stub> stub = Federation::NewStub(channel);
  return BestOf(kRepetitions, [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const TensorList model, ReceiveModel(*stub, DownloadRequest(), UINT64_MAX));
    uint64_t received = 0;
    for (const NamedTensor& t : model) received += t.byte_size();
    if (received != bytes) {
      return absl::InternalError(absl::StrCat("downloaded ", received, " bytes of ", bytes));
    }
    return absl::OkStatus();
  });
}

absl::Status RunTransferBench(const std::vector<int64_t>& flags) {
  const size_t chunk_bytes = static_cast<size_t>(flags[1]) * 1024;
  const std::vector<TensorMeta> metas = BenchModelMetas(flags[0]);
  const uint64_t bytes = static_cast<uint64_t>(flags[0]) * kMib;
  ASSIGN_OR_RETURN(const Pki pki, MakePki());
  ASSIGN_OR_RETURN(const std::unique_ptr<ServerProcess> server, ServerProcess::Start(pki, metas));
  RetainFreedMemory();  // as fl-client does; the server process frees as the coordinator does
  const auto update = std::make_shared<const TensorList>(MakeBenchTensors(metas, 1));
  std::printf("update: %lld MiB in %lld KiB chunks, loopback, best of %d x %d, interleaved\n",
              static_cast<long long>(flags[0]), static_cast<long long>(flags[1]), kSessions,
              kRepetitions);

  // The machine is shared: each way is timed in every session, so that a noisy spell does
  // not fall on one of them only; each keeps its best time.
  double borrowed_s = 1e30, copied_s = 1e30, unchecked_s = 1e30, tls_s = 1e30, download_s = 1e30;
  TlsSocketResult tls;
  for (int session = 0; session < kSessions; ++session) {
    ASSIGN_OR_RETURN(double t, TimeGrpc(pki, server->port(), update, bytes, chunk_bytes, true,
                                        SendPath::kBorrowed));
    borrowed_s = std::min(borrowed_s, t);
    ASSIGN_OR_RETURN(
        t, TimeGrpc(pki, server->port(), update, bytes, chunk_bytes, true, SendPath::kCopied));
    copied_s = std::min(copied_s, t);
    ASSIGN_OR_RETURN(
        t, TimeGrpc(pki, server->port(), update, bytes, chunk_bytes, false, SendPath::kBorrowed));
    unchecked_s = std::min(unchecked_s, t);
    ASSIGN_OR_RETURN(t, TimeDownload(pki, server->port(), bytes));
    download_s = std::min(download_s, t);
    ASSIGN_OR_RETURN(tls,
                     TimeTlsSocket(pki.coordinator, pki.site, *update, chunk_bytes, kRepetitions));
    tls_s = std::min(tls_s, tls.seconds);
  }
  const double grpc_mib_s = MibPerSecond(bytes, borrowed_s);
  const double tls_mib_s = MibPerSecond(bytes, tls_s);
  std::printf("gRPC mutual TLS Upload as fl-client sends it, validated:  %8.1f MiB/s\n",
              grpc_mib_s);
  std::printf(
      "  the same with chunks copied into protobufs first:         %8.1f MiB/s (reference)\n",
      MibPerSecond(bytes, copied_s));
  std::printf(
      "  the same without the server's chunk validation:           %8.1f MiB/s (reference)\n",
      MibPerSecond(bytes, unchecked_s));
  std::printf("plain OpenSSL mutual TLS socket (%s, %s): %8.1f MiB/s\n", tls.version.c_str(),
              tls.cipher.c_str(), tls_mib_s);
  std::printf(
      "gRPC mutual TLS Download as fl-client receives it (%zu KiB chunks): %6.1f MiB/s "
      "(reference)\n",
      kDefaultChunkBytes >> 10, MibPerSecond(bytes, download_s));
  PrintKeyValues({{"transfer_ratio", grpc_mib_s / tls_mib_s},
                  {"grpc_mib_s", grpc_mib_s},
                  {"tls_mib_s", tls_mib_s}});
  return absl::OkStatus();
}

}  // namespace

BenchRun SetUpTransferBench(CLI::App& app) {
  auto flags = std::make_shared<std::vector<int64_t>>(
      std::vector<int64_t>{64, static_cast<int64_t>(kUploadChunkBytes >> 10)});
  app.add_option("--mib", (*flags)[0], "update size in MiB")->check(CLI::PositiveNumber);
  app.add_option("--chunk_kib", (*flags)[1], "chunk and write size in KiB")
      ->check(CLI::PositiveNumber);
  return [flags] { return RunTransferBench(*flags); };
}

}  // namespace fl::bench
