#ifndef QUOTAD_TESTS_SERVER_TEST_CERTS_H_
#define QUOTAD_TESTS_SERVER_TEST_CERTS_H_

// Throw-away certificate authorities and certificates made with the openssl CLI, in a temporary
// directory removed at the end: ca (trusted), server (signed by ca, for localhost and 127.0.0.1),
// client (signed by ca), other_ca, and other_server and other_client (signed by other_ca).

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace quotad::testing {

class TestCerts {
 public:
  // Makes everything; ok() says whether it worked (openssl missing or failing: false).
  TestCerts() {
    char tmpl[] = "/tmp/quotad-certs-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return;
    dir_ = tmpl;
    ok_ = MakeCa("ca") && MakeCa("other_ca") &&
          MakeLeaf("server", "ca", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1") &&
          MakeLeaf("other_server", "other_ca", "localhost",
                   "subjectAltName=DNS:localhost,IP:127.0.0.1") &&
          MakeLeaf("client", "ca", "worker", "extendedKeyUsage=clientAuth") &&
          MakeLeaf("other_client", "other_ca", "intruder", "extendedKeyUsage=clientAuth");
  }
  ~TestCerts() {
    if (!dir_.empty()) Run("rm -rf '" + dir_ + "'");
  }
  TestCerts(const TestCerts&) = delete;
  TestCerts& operator=(const TestCerts&) = delete;

  bool ok() const { return ok_; }
  const std::string& dir() const { return dir_; }
  std::string Cert(const std::string& name) const { return dir_ + "/" + name + ".pem"; }
  std::string Key(const std::string& name) const { return dir_ + "/" + name + ".key"; }
  static std::string Read(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  static bool Run(const std::string& cmd) { return system((cmd + " >/dev/null 2>&1").c_str()) == 0; }

  bool MakeCa(const std::string& name) {
    return Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
               " -subj '/CN=quotad test " + name + "' -keyout '" + Key(name) + "' -out '" +
               Cert(name) + "'");
  }

  bool MakeLeaf(const std::string& name, const std::string& ca, const std::string& cn,
                const std::string& ext) {
    const std::string ext_file = dir_ + "/" + name + ".ext";
    {
      std::ofstream out(ext_file);
      out << ext << "\n";
    }
    return Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=" +
               cn + "' -keyout '" + Key(name) + "' -out '" + dir_ + "/" + name + ".csr'") &&
           Run("openssl x509 -req -in '" + dir_ + "/" + name + ".csr' -CA '" + Cert(ca) +
               "' -CAkey '" + Key(ca) + "' -CAcreateserial -days 2 -extfile '" + ext_file +
               "' -out '" + Cert(name) + "'");
  }

  std::string dir_;
  bool ok_ = false;
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SERVER_TEST_CERTS_H_
