#include "service/server/http_pages.h"

#include <CivetServer.h>
#include <civetweb.h>

#include <memory>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace quotad {
namespace {

// Which HttpPages serves each civetweb server. Entries are added while an Exposer is built and
// removed by ~HttpPages, after that Exposer stopped.
absl::Mutex registry_mu(absl::kConstInit);
absl::flat_hash_map<const mg_context*, HttpPages*>& Registry() ABSL_EXCLUSIVE_LOCKS_REQUIRED(registry_mu) {
  static auto* map = new absl::flat_hash_map<const mg_context*, HttpPages*>();
  return *map;
}
thread_local HttpPages* binding = nullptr;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string UrlDecode(absl::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '+') {
      out.push_back(' ');
    } else if (in[i] == '%' && i + 2 < in.size() &&
               HexValue(in[i + 1]) >= 0 && HexValue(in[i + 2]) >= 0) {
      out.push_back(static_cast<char>(HexValue(in[i + 1]) * 16 + HexValue(in[i + 2])));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

absl::string_view ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    default: return status >= 500 ? "Internal Server Error" : "Error";
  }
}

}  // namespace

std::optional<std::string> QueryParam(absl::string_view query, absl::string_view name) {
  for (absl::string_view pair : absl::StrSplit(query, '&')) {
    const size_t eq = pair.find('=');
    const absl::string_view key = pair.substr(0, eq);
    if (UrlDecode(key) != name) continue;
    return eq == absl::string_view::npos ? std::string() : UrlDecode(pair.substr(eq + 1));
  }
  return std::nullopt;
}

const CivetCallbacks* HttpPages::Callbacks() {
  static const CivetCallbacks* callbacks = [] {
    auto* c = new CivetCallbacks();
    c->begin_request = &HttpPages::BeginRequest;
    c->init_context = &HttpPages::InitContext;
    return c;
  }();
  return callbacks;
}

HttpPages::Binding::Binding(HttpPages* pages) { binding = pages; }
HttpPages::Binding::~Binding() { binding = nullptr; }

void HttpPages::InitContext(const mg_context* ctx) {
  // mg_start() calls this on the thread that starts the server, before it serves.
  if (binding == nullptr) return;
  binding->ctx_ = ctx;
  absl::MutexLock lock(&registry_mu);
  Registry()[ctx] = binding;
}

HttpPages::~HttpPages() {
  if (ctx_ == nullptr) return;
  absl::MutexLock lock(&registry_mu);
  Registry().erase(ctx_);
}

void HttpPages::SetHandler(Handler handler) {
  auto shared = handler ? std::make_shared<const Handler>(std::move(handler)) : nullptr;
  absl::MutexLock lock(&mu_);
  handler_ = std::move(shared);
}

int HttpPages::BeginRequest(mg_connection* conn) {
  HttpPages* pages = nullptr;
  {
    absl::MutexLock lock(&registry_mu);
    auto it = Registry().find(mg_get_context(conn));
    if (it == Registry().end()) return 0;
    pages = it->second;
  }
  std::shared_ptr<const Handler> handler;
  {
    absl::MutexLock lock(&pages->mu_);
    handler = pages->handler_;
  }
  if (handler == nullptr) return 0;
  const mg_request_info* info = mg_get_request_info(conn);
  HttpRequest request;
  request.method = info->request_method != nullptr ? info->request_method : "";
  request.path = info->local_uri != nullptr ? info->local_uri : "";
  request.query = info->query_string != nullptr ? info->query_string : "";
  std::optional<HttpReply> reply = (*handler)(request);
  if (!reply.has_value()) return 0;
  std::string head = absl::StrCat("HTTP/1.1 ", reply->status, " ", ReasonPhrase(reply->status),
                                  "\r\nContent-Type: ", reply->content_type,
                                  "\r\nContent-Length: ", reply->body.size(),
                                  "\r\nConnection: close\r\n");
  for (const auto& [k, v] : reply->headers) absl::StrAppend(&head, k, ": ", v, "\r\n");
  head += "\r\n";
  mg_write(conn, head.data(), head.size());
  if (request.method != "HEAD") mg_write(conn, reply->body.data(), reply->body.size());
  return reply->status;
}

}  // namespace quotad
