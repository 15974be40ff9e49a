// Server credentials from certificate files (service/server/tls.h): plaintext, TLS, mutual TLS,
// and the checks that name a bad file. Serving with them is in security_test.cc.

#include "service/server/tls.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/test_certs.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::StatusIs;
using ::testing::_;
using ::testing::HasSubstr;

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.made()) << "openssl could not make test certificates";
  }
  testing::TestCerts certs_;
};

TEST_F(TlsTest, NoFilesMeansPlaintext) {
  TlsOptions o;
  EXPECT_FALSE(TlsEnabled(o));
  ASSERT_OK_AND_ASSIGN(std::shared_ptr<grpc::ServerCredentials> creds, MakeServerCredentials(o));
  EXPECT_NE(creds, nullptr);
}

TEST_F(TlsTest, BuildsTlsAndMutualTlsCredentials) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  o.key_path = certs_.Key("server");
  EXPECT_TRUE(TlsEnabled(o));
  EXPECT_OK(MakeServerCredentials(o));
  o.client_ca_path = certs_.Cert("ca");
  EXPECT_OK(MakeServerCredentials(o));
}

TEST_F(TlsTest, RefusesHalfAPair) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(_, HasSubstr("--tls_cert and --tls_key go together")));
  TlsOptions ca_only;
  ca_only.client_ca_path = certs_.Cert("ca");
  EXPECT_THAT(CheckTlsFiles(ca_only), StatusIs(_, HasSubstr("needs the server's --tls_cert")));
}

TEST_F(TlsTest, RefusesAKeyOfAnotherCertificate) {
  TlsOptions o;
  o.cert_path = certs_.Cert("server");
  o.key_path = certs_.Key("client");
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(absl::StatusCode::kInvalidArgument,
                                         HasSubstr("does not match certificate")));
}

TEST_F(TlsTest, RefusesMissingAndGarbageFiles) {
  TlsOptions o;
  o.cert_path = certs_.dir() + "/missing.pem";
  o.key_path = certs_.Key("server");
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(_, HasSubstr("cannot read TLS certificate")));
  const std::string garbage = certs_.dir() + "/garbage.pem";
  std::ofstream(garbage) << "not a certificate\n";
  o.cert_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(_, HasSubstr("is not a PEM certificate")));
  o.cert_path = certs_.Cert("server");
  o.key_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(_, HasSubstr("is not an unencrypted PEM private key")));
  o.key_path = certs_.Key("server");
  o.client_ca_path = garbage;
  EXPECT_THAT(CheckTlsFiles(o), StatusIs(_, HasSubstr("holds no PEM certificate")));
}

}  // namespace
}  // namespace quotad
