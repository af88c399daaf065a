#include "common/x509.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctime>
#include <memory>
#include <set>
#include <string>

namespace fl {
namespace {

// Parses a PEM certificate with OpenSSL directly, independently of the code under test.
std::unique_ptr<X509, void (*)(X509*)> RawCert(const std::string& pem) {
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  return {cert, X509_free};
}

// "DNS:name" and "IP:a.b.c.d" entries of the certificate's subjectAltName.
std::set<std::string> SanEntries(X509* cert) {
  std::set<std::string> out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
    if (name->type == GEN_DNS) {
      out.insert("DNS:" +
                 std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(name->d.dNSName)),
                             ASN1_STRING_length(name->d.dNSName)));
    } else if (name->type == GEN_IPADD && ASN1_STRING_length(name->d.iPAddress) == 4) {
      char text[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, ASN1_STRING_get0_data(name->d.iPAddress), text, sizeof(text));
      out.insert(std::string("IP:") + text);
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

CertRequest ServerRequest() {
  CertRequest request;
  request.common_name = "coordinator";
  request.organizational_unit = "coordinator";
  request.dns_names = {"coordinator", "localhost"};
  request.ip_addresses = {"127.0.0.1"};
  request.valid_days = 30;
  return request;
}

TEST(X509Test, CaIsSelfSignedCa) {
  auto ca = CreateCa("test consortium", 365);
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto cert = RawCert(ca->cert_pem);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_ca(cert.get()), 1);
  EXPECT_TRUE(VerifyCertChain(ca->cert_pem, ca->cert_pem).ok());
  EXPECT_TRUE(CheckKeyMatchesCert(ca->key_pem, ca->cert_pem).ok());
  auto subject = ParseCertSubject(ca->cert_pem);
  ASSERT_TRUE(subject.ok());
  EXPECT_EQ(subject->common_name, "test consortium");
}

TEST(X509Test, LeafChainsToCaAndCarriesNames) {
  auto ca = CreateCa("test consortium", 365);
  ASSERT_TRUE(ca.ok()) << ca.status();
  auto leaf = IssueCert(*ca, ServerRequest());
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  EXPECT_TRUE(VerifyCertChain(ca->cert_pem, leaf->cert_pem).ok());
  EXPECT_TRUE(CheckPrivateKeyPem(leaf->key_pem).ok());
  EXPECT_TRUE(CheckKeyMatchesCert(leaf->key_pem, leaf->cert_pem).ok());
  EXPECT_FALSE(CheckKeyMatchesCert(ca->key_pem, leaf->cert_pem).ok());

  auto cert = RawCert(leaf->cert_pem);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(SanEntries(cert.get()),
            (std::set<std::string>{"DNS:coordinator", "DNS:localhost", "IP:127.0.0.1"}));
  EXPECT_EQ(X509_check_ca(cert.get()), 0);
  EXPECT_EQ(X509_check_host(cert.get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert.get(), "127.0.0.1", 0), 1);
  EXPECT_TRUE(X509_get_extended_key_usage(cert.get()) & XKU_SSL_SERVER);
  EXPECT_TRUE(X509_get_extended_key_usage(cert.get()) & XKU_SSL_CLIENT);
  EXPECT_NE(X509_get0_subject_key_id(cert.get()), nullptr);
  EXPECT_NE(X509_get0_authority_key_id(cert.get()), nullptr);

  auto subject = ParseCertSubject(leaf->cert_pem);
  ASSERT_TRUE(subject.ok());
  EXPECT_EQ(subject->common_name, "coordinator");
  EXPECT_EQ(subject->organizational_unit, "coordinator");
}

TEST(X509Test, SerialsAreRandomAndLarge) {
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  std::set<std::string> serials;
  for (int i = 0; i < 4; ++i) {
    auto leaf = IssueCert(*ca, ServerRequest());
    ASSERT_TRUE(leaf.ok());
    auto cert = RawCert(leaf->cert_pem);
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr);
    EXPECT_GE(BN_num_bits(bn), 120);
    char* hex = BN_bn2hex(bn);
    serials.insert(hex);
    OPENSSL_free(hex);
    BN_free(bn);
  }
  EXPECT_EQ(serials.size(), 4u);
}

TEST(X509Test, OtherCaDoesNotVerify) {
  auto ca = CreateCa("ca", 10);
  auto other = CreateCa("ca", 10);  // same name, different key
  ASSERT_TRUE(ca.ok() && other.ok());
  auto leaf = IssueCert(*other, ServerRequest());
  ASSERT_TRUE(leaf.ok());
  absl::Status status = VerifyCertChain(ca->cert_pem, leaf->cert_pem);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  // A bundle holding both CAs accepts it.
  EXPECT_TRUE(VerifyCertChain(ca->cert_pem + other->cert_pem, leaf->cert_pem).ok());
}

TEST(X509Test, PastValidityWindowIsExpired) {
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  CertRequest request = ServerRequest();
  request.valid_days = 1;
  request.not_before_offset_seconds = -3 * 86400;
  auto leaf = IssueCert(*ca, request);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::Status status = VerifyCertChain(ca->cert_pem, leaf->cert_pem);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("expired"), std::string::npos) << status;
}

TEST(X509Test, EarliestNotAfterOfACertificateAndOfABundle) {
  const int64_t now = static_cast<int64_t>(time(nullptr));
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  CertRequest request = ServerRequest();
  request.valid_days = 3;
  auto leaf = IssueCert(*ca, request);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::StatusOr<int64_t> leaf_end = EarliestNotAfter(leaf->cert_pem);
  ASSERT_TRUE(leaf_end.ok()) << leaf_end.status();
  EXPECT_NEAR(*leaf_end, now + 3 * 86400, 120);
  absl::StatusOr<int64_t> ca_end = EarliestNotAfter(ca->cert_pem);
  ASSERT_TRUE(ca_end.ok());
  EXPECT_NEAR(*ca_end, now + 10 * 86400, 120);
  // A bundle expires with its first certificate, whatever the order.
  EXPECT_EQ(*EarliestNotAfter(ca->cert_pem + leaf->cert_pem), *leaf_end);
  EXPECT_EQ(*EarliestNotAfter(leaf->cert_pem + ca->cert_pem), *leaf_end);
  EXPECT_EQ(EarliestNotAfter("garbage").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(X509Test, RejectsBadInput) {
  auto ca = CreateCa("ca", 10);
  ASSERT_TRUE(ca.ok());
  CertRequest request = ServerRequest();
  request.ip_addresses = {"not-an-ip"};
  auto bad_ip = IssueCert(*ca, request);
  EXPECT_EQ(bad_ip.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_ip.status().message().find("not-an-ip"), std::string::npos);

  request = ServerRequest();
  request.common_name = "";
  EXPECT_EQ(IssueCert(*ca, request).status().code(), absl::StatusCode::kInvalidArgument);

  auto other = CreateCa("ca", 10);
  ASSERT_TRUE(other.ok());
  KeyAndCert mismatched{other->key_pem, ca->cert_pem};
  EXPECT_FALSE(IssueCert(mismatched, ServerRequest()).ok());
  EXPECT_EQ(ParseCertSubject("garbage").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CheckPrivateKeyPem(ca->cert_pem).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fl
