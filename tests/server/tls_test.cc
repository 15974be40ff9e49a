#include "service/server/tls.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_certs.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(certs_.ok()) << "openssl could not make test certificates"; }
  testing::TestCerts certs_;
};

TEST_F(TlsTest, NoFilesMeansPlaintext) {
  TlsOptions o;
  EXPECT_FALSE(TlsEnabled(o));
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeServerCredentials(o);
  ASSERT_TRUE(creds.ok());
  EXPECT_NE(*creds, nullptr);
}

TEST_F(TlsTest, BuildsTlsAndMutualTlsCredentials) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  o.key_path = certs_.Key("server");
  EXPECT_TRUE(TlsEnabled(o));
  EXPECT_TRUE(MakeServerCredentials(o).ok());
  o.client_ca_path = certs_.Cert("ca");
  EXPECT_TRUE(MakeServerCredentials(o).ok());
}

TEST_F(TlsTest, RefusesHalfAPair) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  EXPECT_THAT(CheckTlsFiles(o).message(), HasSubstr("--tls_cert and --tls_key go together"));
  TlsOptions ca_only;
  ca_only.client_ca_path = certs_.Cert("ca");
  EXPECT_THAT(CheckTlsFiles(ca_only).message(), HasSubstr("needs the server's --tls_cert"));
}

TEST_F(TlsTest, RefusesAKeyOfAnotherCertificate) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  o.key_path = certs_.Key("client");
  absl::Status s = CheckTlsFiles(o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("does not match certificate"));
}

TEST_F(TlsTest, RefusesMissingAndGarbageFiles) {
  TlsOptions o;
  o.cert_path = certs_.dir() + "/missing.pem";
  o.key_path = certs_.Key("server");
  EXPECT_THAT(CheckTlsFiles(o).message(), HasSubstr("cannot read TLS certificate"));
  const std::string garbage = certs_.dir() + "/garbage.pem";
  std::ofstream(garbage) << "not a certificate\n";
  o.cert_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o).message(), HasSubstr("is not a PEM certificate"));
  o.cert_path = certs_.Cert("server");
  o.key_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o).message(), HasSubstr("is not an unencrypted PEM private key"));
  o.key_path = certs_.Key("server");
  o.client_ca_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o).message(), HasSubstr("holds no PEM certificate"));
}

}  // namespace
}  // namespace quotad
