#include "common/x509.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace fl {
namespace {

template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
using BioPtr = std::unique_ptr<BIO, OpenSslDeleter<BIO, BIO_free_all>>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter<EVP_PKEY, EVP_PKEY_free>>;
using BignumPtr = std::unique_ptr<BIGNUM, OpenSslDeleter<BIGNUM, BN_free>>;
using Asn1IntPtr = std::unique_ptr<ASN1_INTEGER, OpenSslDeleter<ASN1_INTEGER, ASN1_INTEGER_free>>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, OpenSslDeleter<X509_EXTENSION, X509_EXTENSION_free>>;
using NamesPtr = std::unique_ptr<GENERAL_NAMES, OpenSslDeleter<GENERAL_NAMES, GENERAL_NAMES_free>>;
using StorePtr = std::unique_ptr<X509_STORE, OpenSslDeleter<X509_STORE, X509_STORE_free>>;
using StoreCtxPtr =
    std::unique_ptr<X509_STORE_CTX, OpenSslDeleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

// Drains OpenSSL's error queue of this thread into one readable string.
std::string DrainOpenSslErrors() {
  std::vector<std::string> messages;
  while (unsigned long code = ERR_get_error()) {
    char buffer[256];
    ERR_error_string_n(code, buffer, sizeof(buffer));
    messages.push_back(buffer);
  }
  return messages.empty() ? "no OpenSSL error recorded" : absl::StrJoin(messages, "; ");
}

// A status with `code` for a failed OpenSSL call: "<what>: <OpenSSL errors>".
absl::Status OpenSslError(absl::string_view what,
                          absl::StatusCode code = absl::StatusCode::kInternal) {
  return absl::Status(code, absl::StrCat(what, ": ", DrainOpenSslErrors()));
}

BioPtr MemoryBio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(size));
}

absl::StatusOr<X509Ptr> ParseCert(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  if (!bio) return OpenSslError("allocating a memory BIO");
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    return OpenSslError("not a PEM certificate", absl::StatusCode::kInvalidArgument);
  }
  return cert;
}

absl::StatusOr<KeyPtr> ParseKey(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  if (!bio) return OpenSslError("allocating a memory BIO");
  KeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return OpenSslError("not a PEM private key", absl::StatusCode::kInvalidArgument);
  return key;
}

absl::StatusOr<KeyPtr> NewP256Key() {
  KeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return OpenSslError("generating an ECDSA P-256 key");
  return key;
}

absl::StatusOr<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return OpenSslError("writing a private key as PEM");
  }
  return BioContents(bio.get());
}

absl::StatusOr<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    return OpenSslError("writing a certificate as PEM");
  }
  return BioContents(bio.get());
}

// A random positive 128-bit serial number.
absl::Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) return OpenSslError("drawing a serial number");
  bytes[0] &= 0x7f;  // keep it positive in DER
  bytes[0] |= 0x40;  // and a full 127 bits long
  BignumPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn) return OpenSslError("converting the serial number");
  Asn1IntPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial || X509_set_serialNumber(cert, serial.get()) != 1) {
    return OpenSslError("setting the serial number");
  }
  return absl::OkStatus();
}

absl::Status SetSubject(X509* cert, const CertRequest& request) {
  X509_NAME* name = X509_get_subject_name(cert);
  auto add = [name](const char* field, const std::string& value) {
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(value.c_str()), -1, -1,
                                      0) == 1;
  };
  if (request.common_name.empty()) {
    return absl::InvalidArgumentError("a certificate needs a common name");
  }
  if (!request.organizational_unit.empty() && !add("OU", request.organizational_unit)) {
    return OpenSslError(absl::StrCat("setting OU '", request.organizational_unit, "'"),
                        absl::StatusCode::kInvalidArgument);
  }
  if (!add("CN", request.common_name)) {
    return OpenSslError(absl::StrCat("setting CN '", request.common_name, "'"),
                        absl::StatusCode::kInvalidArgument);
  }
  return absl::OkStatus();
}

absl::Status SetValidity(X509* cert, const CertRequest& request) {
  if (request.valid_days <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("valid_days must be positive, got ", request.valid_days));
  }
  long start = static_cast<long>(request.not_before_offset_seconds);
  long end = start + static_cast<long>(request.valid_days) * 86400L;
  if (!X509_gmtime_adj(X509_getm_notBefore(cert), start) ||
      !X509_gmtime_adj(X509_getm_notAfter(cert), end)) {
    return OpenSslError("setting the validity window");
  }
  return absl::OkStatus();
}

absl::Status AddGeneralName(GENERAL_NAMES* names, int type, ASN1_STRING* value) {
  GENERAL_NAME* name = GENERAL_NAME_new();
  if (!name) return OpenSslError("allocating a subjectAltName entry");
  GENERAL_NAME_set0_value(name, type, value);
  if (!sk_GENERAL_NAME_push(names, name)) {
    GENERAL_NAME_free(name);
    return OpenSslError("adding a subjectAltName entry");
  }
  return absl::OkStatus();
}

absl::Status AddSubjectAltName(X509* cert, const CertRequest& request) {
  if (request.dns_names.empty() && request.ip_addresses.empty()) return absl::OkStatus();
  NamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) return OpenSslError("allocating subjectAltName");
  for (const std::string& dns : request.dns_names) {
    ASN1_IA5STRING* value = ASN1_IA5STRING_new();
    if (!value || ASN1_STRING_set(value, dns.data(), static_cast<int>(dns.size())) != 1) {
      ASN1_IA5STRING_free(value);
      return OpenSslError(absl::StrCat("encoding DNS name '", dns, "'"));
    }
    RETURN_IF_ERROR(AddGeneralName(names.get(), GEN_DNS, value));
  }
  for (const std::string& ip : request.ip_addresses) {
    ASN1_OCTET_STRING* value = a2i_IPADDRESS(ip.c_str());
    if (!value) {
      return OpenSslError(absl::StrCat("'", ip, "' is not an IP address"),
                          absl::StatusCode::kInvalidArgument);
    }
    RETURN_IF_ERROR(AddGeneralName(names.get(), GEN_IPADD, value));
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), 0, X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError("adding subjectAltName");
  }
  return absl::OkStatus();
}

// Adds one extension written in OpenSSL's config syntax ("critical,CA:TRUE").
absl::Status AddConfExtension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError(absl::StrCat("adding extension ", OBJ_nid2sn(nid), "=", value));
  }
  return absl::OkStatus();
}

// basicConstraints, keyUsage, extendedKeyUsage and key identifiers. `issuer` is `cert` itself
// for a self-signed CA; its subject key identifier must already be present.
absl::Status AddExtensions(X509* cert, X509* issuer, const CertRequest& request) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  RETURN_IF_ERROR(AddConfExtension(cert, &ctx, NID_basic_constraints,
                                   request.is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE"));
  RETURN_IF_ERROR(AddConfExtension(cert, &ctx, NID_key_usage,
                                   request.is_ca ? "critical,keyCertSign,cRLSign,digitalSignature"
                                                 : "critical,digitalSignature,keyAgreement"));
  if (!request.is_ca) {
    RETURN_IF_ERROR(AddConfExtension(cert, &ctx, NID_ext_key_usage, "serverAuth,clientAuth"));
  }
  RETURN_IF_ERROR(AddConfExtension(cert, &ctx, NID_subject_key_identifier, "hash"));
  if (issuer == cert) X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  RETURN_IF_ERROR(AddConfExtension(cert, &ctx, NID_authority_key_identifier, "keyid:always"));
  return AddSubjectAltName(cert, request);
}

// Builds and signs a certificate for `key`. `issuer`/`issuer_key` are null for a self-signed one.
absl::StatusOr<X509Ptr> BuildCert(const CertRequest& request, EVP_PKEY* key, X509* issuer,
                                  EVP_PKEY* issuer_key) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) return OpenSslError("creating a certificate");
  RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  RETURN_IF_ERROR(SetSubject(cert.get(), request));
  RETURN_IF_ERROR(SetValidity(cert.get(), request));
  X509* signer = issuer ? issuer : cert.get();
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)) != 1 ||
      X509_set_pubkey(cert.get(), key) != 1) {
    return OpenSslError("setting issuer and public key");
  }
  RETURN_IF_ERROR(AddExtensions(cert.get(), signer, request));
  if (X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()) <= 0) {
    return OpenSslError("signing the certificate");
  }
  return cert;
}

absl::StatusOr<KeyAndCert> Finish(EVP_PKEY* key, X509* cert) {
  KeyAndCert out;
  ASSIGN_OR_RETURN(out.key_pem, KeyToPem(key));
  ASSIGN_OR_RETURN(out.cert_pem, CertToPem(cert));
  return out;
}

std::string NameField(X509_NAME* name, int nid) {
  int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  unsigned char* utf8 = nullptr;
  int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) return "";
  std::string value(reinterpret_cast<char*>(utf8), static_cast<size_t>(length));
  OPENSSL_free(utf8);
  return value;
}

}  // namespace

absl::StatusOr<KeyAndCert> CreateCa(const std::string& name, int valid_days) {
  CertRequest request;
  request.common_name = name;
  request.valid_days = valid_days;
  request.is_ca = true;
  ASSIGN_OR_RETURN(KeyPtr key, NewP256Key());
  ASSIGN_OR_RETURN(X509Ptr cert, BuildCert(request, key.get(), nullptr, nullptr));
  return Finish(key.get(), cert.get());
}

absl::StatusOr<KeyAndCert> IssueCert(const KeyAndCert& ca, const CertRequest& request) {
  auto ca_cert = ParseCert(ca.cert_pem);
  if (!ca_cert.ok()) return Annotate(ca_cert.status(), "CA certificate");
  auto ca_key = ParseKey(ca.key_pem);
  if (!ca_key.ok()) return Annotate(ca_key.status(), "CA key");
  if (X509_check_private_key(ca_cert->get(), ca_key->get()) != 1) {
    return OpenSslError("the CA key does not match the CA certificate",
                        absl::StatusCode::kInvalidArgument);
  }
  ASSIGN_OR_RETURN(KeyPtr key, NewP256Key());
  ASSIGN_OR_RETURN(X509Ptr cert, BuildCert(request, key.get(), ca_cert->get(), ca_key->get()));
  return Finish(key.get(), cert.get());
}

absl::StatusOr<CertSubject> ParseCertSubject(const std::string& cert_pem) {
  ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem));
  X509_NAME* name = X509_get_subject_name(cert.get());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (X509_digest(cert.get(), EVP_sha256(), digest, &length) != 1) {
    return OpenSslError("computing the certificate's fingerprint");
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string fingerprint;
  for (unsigned int i = 0; i < length; ++i) {
    fingerprint += kHex[digest[i] >> 4];
    fingerprint += kHex[digest[i] & 15];
  }
  return CertSubject{NameField(name, NID_commonName), NameField(name, NID_organizationalUnitName),
                     fingerprint};
}

absl::Status CheckPrivateKeyPem(const std::string& key_pem) { return ParseKey(key_pem).status(); }

absl::Status CheckKeyMatchesCert(const std::string& key_pem, const std::string& cert_pem) {
  ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem));
  ASSIGN_OR_RETURN(KeyPtr key, ParseKey(key_pem));
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return OpenSslError("the private key does not match the certificate",
                        absl::StatusCode::kInvalidArgument);
  }
  return absl::OkStatus();
}

absl::Status VerifyCertChain(const std::string& ca_pem, const std::string& cert_pem) {
  ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem));
  StorePtr store(X509_STORE_new());
  BioPtr bio = MemoryBio(ca_pem);
  if (!store || !bio) return OpenSslError("allocating a certificate store");
  int count = 0;
  while (X509Ptr ca{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1) return OpenSslError("adding a CA");
    ++count;
  }
  ERR_clear_error();  // the loop ends on the "no start line" error at the end of the bundle
  if (count == 0) return absl::InvalidArgumentError("no PEM certificate in the CA bundle");
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return OpenSslError("preparing certificate verification");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int error = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::FailedPreconditionError(absl::StrCat(
        "certificate does not verify against the CA: ", X509_verify_cert_error_string(error)));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> EarliestNotAfter(const std::string& pem) {
  BioPtr bio = MemoryBio(pem);
  if (!bio) return OpenSslError("allocating a memory BIO");
  std::optional<int64_t> earliest;
  while (X509Ptr cert{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    struct tm when = {};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &when) != 1) {
      return OpenSslError("reading a certificate's notAfter", absl::StatusCode::kInvalidArgument);
    }
    const int64_t seconds = timegm(&when);
    if (!earliest || seconds < *earliest) earliest = seconds;
  }
  ERR_clear_error();  // the loop ends on the "no start line" error at the end of the text
  if (!earliest) return absl::InvalidArgumentError("no PEM certificate");
  return *earliest;
}

}  // namespace fl
