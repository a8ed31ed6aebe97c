// The HTTP server's router and request-target parser (internal to src/http; exposed for
// tests). Both read outside input: every failure is an Error, never a crash.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "http/server.h"

namespace tartarus::http {

// Splits an origin-form target ("/a/b%20c?x=1") into request.path (decoded) and
// request.query. Anything else (absolute-form, "*", bad escapes) is kInvalidArgument.
Status ParseTarget(std::string_view target, Request& request);

struct RouteEntry {
  std::string method;
  std::string pattern;
  std::vector<std::string> segments;  // "{id}" marks a parameter
  Handler handler;
  RouteOptions options;
};

class Router {
 public:
  enum class Outcome { kFound, kNotFound, kMethodNotAllowed };
  struct Match {
    Outcome outcome = Outcome::kNotFound;
    const RouteEntry* route = nullptr;
    std::map<std::string, std::string> params;
    std::string allow;  // for kMethodNotAllowed: "GET, POST"
  };

  // A malformed pattern (not starting with '/', an empty or unclosed "{") is kInvalidArgument.
  Status Add(std::string method, std::string pattern, Handler handler, RouteOptions options);
  // raw_path: the target's path, still percent-encoded (so "%2F" stays inside one segment).
  // HEAD falls back to GET routes. A bad escape in a segment is kInvalidArgument.
  Result<Match> Find(std::string_view method, std::string_view raw_path) const;
  const std::vector<RouteEntry>& routes() const { return routes_; }

 private:
  std::vector<RouteEntry> routes_;
};

}  // namespace tartarus::http
