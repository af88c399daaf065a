// The transfer benchmark's baseline: the same bytes over a plain OpenSSL
// mutual-TLS 1.3 connection on a loopback TCP socket, with no framing, protobuf
// or validation.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "common/transport/tls.h"

namespace fl::bench {

struct TlsSocketResult {
  double seconds = 0;   // best time to send the update and get the server's acknowledgement
  std::string version;  // negotiated protocol, e.g. "TLSv1.3"
  std::string cipher;   // negotiated cipher suite
};

// Sends the raw bytes of `update` in SSL_writes of `chunk_bytes` to an
// in-process server thread (presenting `server`'s certificate and requiring one
// from the client) that reads all of them and answers with one byte. One
// connection; one untimed warm-up and `repetitions` timed transfers.
absl::StatusOr<TlsSocketResult> TimeTlsSocket(const TlsMaterial& server, const TlsMaterial& client,
                                              const TensorList& update, size_t chunk_bytes,
                                              int repetitions);

}  // namespace fl::bench
