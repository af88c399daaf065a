#include "bench/tls_socket.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "common/status.h"

namespace fl::bench {
namespace {

using SslCtxPtr = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;
using SslPtr = std::unique_ptr<SSL, decltype(&SSL_free)>;

absl::Status SslError(const std::string& what) {
  char reason[256] = "unknown error";
  if (const unsigned long code = ERR_get_error(); code != 0) {
    ERR_error_string_n(code, reason, sizeof(reason));
  }
  ERR_clear_error();
  return absl::InternalError(absl::StrCat(what, ": ", reason));
}

// A TLS 1.3-only context presenting `m`'s certificate and requiring a peer
// certificate that chains to `m`'s CA.
absl::StatusOr<SslCtxPtr> MakeContext(const TlsMaterial& m, bool server) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()), &SSL_CTX_free);
  if (ctx == nullptr) return SslError("SSL_CTX_new");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  auto read_pem = [](const std::string& pem, auto reader) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(pem.data(), pem.size()),
                                                  &BIO_free);
    return reader(bio.get(), nullptr, nullptr, nullptr);
  };
  std::unique_ptr<X509, decltype(&X509_free)> cert(read_pem(m.cert_pem, PEM_read_bio_X509),
                                                   &X509_free);
  std::unique_ptr<X509, decltype(&X509_free)> ca(read_pem(m.ca_pem, PEM_read_bio_X509), &X509_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
      read_pem(m.key_pem, PEM_read_bio_PrivateKey), &EVP_PKEY_free);
  if (cert == nullptr || ca == nullptr || key == nullptr) return SslError("reading PEM");
  if (SSL_CTX_use_certificate(ctx.get(), cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1 ||
      X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), ca.get()) != 1) {
    return SslError("loading certificate, key and CA");
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return ctx;
}

// A listening TCP socket on 127.0.0.1 with a kernel-chosen port.
absl::StatusOr<int> Listen(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(fd, 1) != 0 || getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) close(fd);
    return absl::InternalError("cannot listen on 127.0.0.1");
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

// Server side: accepts one connection, then `transfers` times reads `bytes` and
// acknowledges.
absl::Status Serve(SSL_CTX* ctx, int listen_fd, uint64_t bytes, int transfers) {
  const int fd = accept(listen_fd, nullptr, nullptr);
  if (fd < 0) return absl::InternalError("accept failed");
  SslPtr ssl(SSL_new(ctx), &SSL_free);
  SSL_set_fd(ssl.get(), fd);
  absl::Status status = SSL_accept(ssl.get()) == 1 ? absl::OkStatus() : SslError("SSL_accept");
  std::vector<char> buffer(kMib);
  for (int t = 0; status.ok() && t < transfers; ++t) {
    for (uint64_t got = 0; status.ok() && got < bytes;) {
      const int n = SSL_read(ssl.get(), buffer.data(), static_cast<int>(buffer.size()));
      if (n <= 0) status = SslError("SSL_read on the server");
      got += n > 0 ? n : 0;
    }
    if (status.ok() && SSL_write(ssl.get(), "k", 1) != 1) status = SslError("SSL_write of ack");
  }
  if (status.ok()) SSL_shutdown(ssl.get());
  close(fd);
  return status;
}

// Client side of one transfer: the update's bytes in writes of `chunk_bytes`,
// then the server's ack.
absl::Status SendOnce(SSL* ssl, const TensorList& update, size_t chunk_bytes) {
  for (const NamedTensor& t : update) {
    const char* data = reinterpret_cast<const char*>(t.data.data());
    for (uint64_t off = 0; off < t.byte_size(); off += chunk_bytes) {
      const int n = static_cast<int>(std::min<uint64_t>(chunk_bytes, t.byte_size() - off));
      if (SSL_write(ssl, data + off, n) != n) return SslError("SSL_write on the client");
    }
  }
  char ack = 0;
  if (SSL_read(ssl, &ack, 1) != 1) return SslError("reading the server's ack");
  return absl::OkStatus();
}

// Connects a TLS client to 127.0.0.1:`port`, checking the server certificate
// names localhost.
absl::StatusOr<SslPtr> Connect(SSL_CTX* ctx, int port, int* fd) {
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (*fd < 0 || connect(*fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::InternalError("cannot connect to the TLS server");
  }
  SslPtr ssl(SSL_new(ctx), &SSL_free);
  SSL_set_fd(ssl.get(), *fd);
  SSL_set1_host(ssl.get(), "localhost");
  if (SSL_connect(ssl.get()) != 1) return SslError("SSL_connect");
  return ssl;
}

}  // namespace

absl::StatusOr<TlsSocketResult> TimeTlsSocket(const TlsMaterial& server, const TlsMaterial& client,
                                              const TensorList& update, size_t chunk_bytes,
                                              int repetitions) {
  ASSIGN_OR_RETURN(SslCtxPtr server_ctx, MakeContext(server, /*server=*/true));
  ASSIGN_OR_RETURN(SslCtxPtr client_ctx, MakeContext(client, /*server=*/false));
  uint64_t bytes = 0;
  for (const NamedTensor& t : update) bytes += t.byte_size();
  int port = 0;
  ASSIGN_OR_RETURN(const int listen_fd, Listen(&port));
  absl::Status served;
  std::thread server_thread([&] {
    served = Serve(server_ctx.get(), listen_fd, bytes,
                   repetitions + 1);  // + BestOf's warm-up
  });
  int fd = -1;
  absl::StatusOr<SslPtr> ssl = Connect(client_ctx.get(), port, &fd);
  TlsSocketResult result;
  absl::StatusOr<double> best = absl::UnknownError("not run");
  if (!ssl.ok()) {
    best = ssl.status();
  } else {
    result.version = SSL_get_version(ssl->get());
    result.cipher = SSL_get_cipher_name(ssl->get());
    best = BestOf(repetitions, [&] { return SendOnce(ssl->get(), update, chunk_bytes); });
    ssl->reset();
  }
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
  server_thread.join();
  if (fd >= 0) close(fd);
  close(listen_fd);
  RETURN_IF_ERROR(best.status());
  RETURN_IF_ERROR(served);
  result.seconds = *best;
  return result;
}

}  // namespace fl::bench
