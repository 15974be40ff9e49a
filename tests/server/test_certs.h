#ifndef QUOTAD_TESTS_SERVER_TEST_CERTS_H_
#define QUOTAD_TESTS_SERVER_TEST_CERTS_H_

// Throw-away certificate authorities and certificates made with the openssl CLI, in a TempDir
// removed at the end: ca (trusted), server (signed by ca, for localhost and 127.0.0.1), client
// (signed by ca), other_ca, and other_server and other_client (signed by other_ca). Not
// thread-safe; owns its directory.

#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <string>

#include "tests/support/temp_dir.h"

namespace quotad::testing {

class TestCerts {
 public:
  // Makes everything; made() says whether it worked (openssl missing or failing: false).
  TestCerts() {
    made_ = MakeCa("ca") && MakeCa("other_ca") &&
            MakeLeaf("server", "ca", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1") &&
            MakeLeaf("other_server", "other_ca", "localhost",
                     "subjectAltName=DNS:localhost,IP:127.0.0.1") &&
            MakeLeaf("client", "ca", "worker", "extendedKeyUsage=clientAuth") &&
            MakeLeaf("other_client", "other_ca", "intruder", "extendedKeyUsage=clientAuth");
  }
  TestCerts(const TestCerts&) = delete;
  TestCerts& operator=(const TestCerts&) = delete;

  bool made() const { return made_; }
  const std::string& dir() const { return dir_.path(); }
  std::string Cert(const std::string& name) const { return dir_.File(name + ".pem"); }
  std::string Key(const std::string& name) const { return dir_.File(name + ".key"); }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  static bool Run(const std::string& cmd) {
    return system((cmd + " >/dev/null 2>&1").c_str()) == 0;
  }

  bool MakeCa(const std::string& name) {
    return Run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
        " -subj '/CN=quotad test " +
        name + "' -keyout '" + Key(name) + "' -out '" + Cert(name) + "'");
  }

  bool MakeLeaf(const std::string& name, const std::string& ca, const std::string& cn,
                const std::string& ext) {
    const std::string ext_file = dir_.WriteFile(name + ".ext", ext + "\n");
    const std::string csr = dir_.File(name + ".csr");
    return Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=" +
               cn + "' -keyout '" + Key(name) + "' -out '" + csr + "'") &&
           Run("openssl x509 -req -in '" + csr + "' -CA '" + Cert(ca) + "' -CAkey '" + Key(ca) +
               "' -CAcreateserial -days 2 -extfile '" + ext_file + "' -out '" + Cert(name) + "'");
  }

  const TempDir dir_{"certs"};
  bool made_ = false;
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SERVER_TEST_CERTS_H_
