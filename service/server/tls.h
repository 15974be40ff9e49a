#ifndef QUOTAD_SERVICE_SERVER_TLS_H_
#define QUOTAD_SERVICE_SERVER_TLS_H_

// Transport security of the gRPC port: plaintext, TLS, or mutual TLS.
//
// The certificate files are read through grpc::experimental::FileWatcherCertificateProvider,
// which reads them again every `refresh_interval`: a rotated certificate, key or client CA is
// used for new handshakes without a restart. Replace the files atomically (write elsewhere, then
// rename, or swap a symlinked directory) so that a key is never read with the wrong certificate.
// The files are checked once at start-up (PEM parses, key matches certificate) so that a mistake
// fails fast instead of failing every handshake.

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quotad {

struct TlsOptions {
  // PEM certificate chain and private key of the server. Both empty: plaintext.
  std::string cert_path;
  std::string key_path;
  // PEM CA bundle that client certificates must chain to. Set: mutual TLS, a client
  // certificate is required and verified. Needs cert_path and key_path.
  std::string client_ca_path;
  // How often the files are read again. Rounded up to whole seconds, at least 1s.
  absl::Duration refresh_interval = absl::Minutes(1);
};

// Whether `options` asks for TLS.
inline bool TlsEnabled(const TlsOptions& options) {
  return !options.cert_path.empty() || !options.key_path.empty() ||
         !options.client_ca_path.empty();
}

// Server credentials for `options`: insecure when TLS is not enabled. kInvalidArgument for a
// half-given pair, an unreadable or unparseable file, or a key that does not match the
// certificate.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsOptions& options);

// Checks the files of `options` as MakeServerCredentials does, without building credentials.
absl::Status CheckTlsFiles(const TlsOptions& options);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_TLS_H_
