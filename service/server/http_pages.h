#ifndef QUOTAD_SERVICE_SERVER_HTTP_PAGES_H_
#define QUOTAD_SERVICE_SERVER_HTTP_PAGES_H_

// Pages other than /metrics on the metrics listener (the status page), without a second HTTP
// server: prometheus-cpp's Exposer runs civetweb, whose begin_request callback sees every request
// first. HttpPages answers the paths its handler serves and leaves the rest (/metrics) to the
// Exposer.
//
//   HttpPages pages;
//   {
//     HttpPages::Binding bind(&pages);            // the Exposer built here belongs to `pages`
//     exposer = std::make_unique<prometheus::Exposer>(listen, 1, HttpPages::Callbacks());
//   }
//   pages.SetHandler([](const HttpRequest& r) -> std::optional<HttpReply> { ... });
//
// Thread-safe. Must outlive the Exposer it was bound to (declare it before the Exposer).

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

struct CivetCallbacks;
struct mg_connection;
struct mg_context;

namespace quotad {

struct HttpRequest {
  std::string method;  // "GET", "HEAD", ...
  std::string path;    // URL-decoded, without the query
  std::string query;   // raw, after '?'
};

struct HttpReply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  std::string body;
};

// Decodes %XX and '+' of one query parameter `name` in `query`; nullopt when absent.
std::optional<std::string> QueryParam(absl::string_view query, absl::string_view name);

class HttpPages {
 public:
  // Answers a request, or nullopt to let the Exposer handle it. Runs on the listener's threads.
  using Handler = std::function<std::optional<HttpReply>(const HttpRequest&)>;

  HttpPages() = default;
  ~HttpPages();
  HttpPages(const HttpPages&) = delete;
  HttpPages& operator=(const HttpPages&) = delete;

  // The civetweb callbacks to give the Exposer's constructor. Static storage.
  static const CivetCallbacks* Callbacks();

  // While alive, a civetweb server started on this thread is bound to `pages`.
  class Binding {
   public:
    explicit Binding(HttpPages* pages);
    ~Binding();
  };

  // Replaces the handler; an empty one serves nothing.
  void SetHandler(Handler handler) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  static int BeginRequest(mg_connection* conn);
  static void InitContext(const mg_context* ctx);

  mutable absl::Mutex mu_;
  std::shared_ptr<const Handler> handler_ ABSL_GUARDED_BY(mu_);
  const mg_context* ctx_ = nullptr;  // set while binding, before any request
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_HTTP_PAGES_H_
