// The HTTP server's router and request-target parser.
#include "http/router.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

namespace tartarus::http {
namespace {

// "/a/b/" -> {"a", "b"}; "/" -> {}. One trailing slash is ignored.
std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  if (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path.empty()) return out;
  while (true) {
    size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

bool IsParam(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

// True when a's segments are more literal than b's at the first place they differ.
bool MoreSpecific(const RouteEntry& a, const RouteEntry& b) {
  for (size_t i = 0; i < a.segments.size() && i < b.segments.size(); ++i) {
    bool a_param = IsParam(a.segments[i]);
    bool b_param = IsParam(b.segments[i]);
    if (a_param != b_param) return !a_param;
  }
  return false;
}

}  // namespace

Status ParseTarget(std::string_view target, Request& request) {
  if (target.empty() || target.front() != '/') {
    return Fail(ErrorCode::kInvalidArgument, "request target must start with '/'");
  }
  size_t question = target.find('?');
  std::string_view raw_path = target.substr(0, question);
  std::string_view raw_query =
      question == std::string_view::npos ? std::string_view() : target.substr(question + 1);
  if (size_t hash = raw_query.find('#'); hash != std::string_view::npos) {
    raw_query = raw_query.substr(0, hash);
  }
  auto path = UrlDecode(raw_path);
  if (!path) return Fail(path.error().Context("request path"));
  auto query = ParseQuery(raw_query);
  if (!query) return Fail(query.error().Context("query string"));
  request.path = std::move(*path);
  request.query = std::move(*query);
  return Ok();
}

Status Router::Add(std::string method, std::string pattern, Handler handler, RouteOptions options) {
  if (pattern.empty() || pattern.front() != '/') {
    return Fail(ErrorCode::kInvalidArgument,
                fmt::format("route '{}' must start with '/'", pattern));
  }
  if (method.empty()) return Fail(ErrorCode::kInvalidArgument, "route method is empty");
  RouteEntry entry;
  for (std::string_view segment : SplitPath(pattern)) {
    bool has_brace = segment.find_first_of("{}") != std::string_view::npos;
    if (segment.empty() || (has_brace && (!IsParam(segment) || segment.size() == 2))) {
      return Fail(ErrorCode::kInvalidArgument,
                  fmt::format("route '{}' has a bad segment '{}'", pattern, segment));
    }
    entry.segments.emplace_back(segment);
  }
  std::transform(method.begin(), method.end(), method.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  entry.method = std::move(method);
  entry.pattern = std::move(pattern);
  entry.handler = std::move(handler);
  entry.options = options;
  routes_.push_back(std::move(entry));
  return Ok();
}

Result<Router::Match> Router::Find(std::string_view method, std::string_view raw_path) const {
  std::vector<std::string> segments;
  for (std::string_view raw : SplitPath(raw_path)) {
    auto decoded = UrlDecode(raw);
    if (!decoded) return Fail(decoded.error().Context("request path"));
    segments.push_back(std::move(*decoded));
  }
  // Every route whose shape matches, the most literal first.
  std::vector<const RouteEntry*> shape_matches;
  for (const RouteEntry& route : routes_) {
    if (route.segments.size() != segments.size()) continue;
    bool ok = true;
    for (size_t i = 0; i < segments.size() && ok; ++i) {
      // An empty segment ("/a//b") never fills a parameter.
      ok = IsParam(route.segments[i]) ? !segments[i].empty() : route.segments[i] == segments[i];
    }
    if (ok) shape_matches.push_back(&route);
  }
  std::stable_sort(shape_matches.begin(), shape_matches.end(),
                   [](const RouteEntry* a, const RouteEntry* b) { return MoreSpecific(*a, *b); });

  Match match;
  if (shape_matches.empty()) return match;
  auto pick = [&](std::string_view wanted) -> const RouteEntry* {
    // The most specific pattern that has this method; a less specific pattern with the
    // method still serves it ("/a/{id}" GET when "/a/b" only has POST).
    for (const RouteEntry* route : shape_matches) {
      if (route->method == wanted) return route;
    }
    return nullptr;
  };
  const RouteEntry* route = pick(method);
  if (route == nullptr && method == "HEAD") route = pick("GET");
  if (route == nullptr) {
    std::set<std::string> methods;
    for (const RouteEntry* candidate : shape_matches) methods.insert(candidate->method);
    if (methods.contains("GET")) methods.insert("HEAD");
    match.outcome = Outcome::kMethodNotAllowed;
    for (const std::string& m : methods) {
      if (!match.allow.empty()) match.allow += ", ";
      match.allow += m;
    }
    return match;
  }
  match.outcome = Outcome::kFound;
  match.route = route;
  for (size_t i = 0; i < segments.size(); ++i) {
    const std::string& pattern_segment = route->segments[i];
    if (IsParam(pattern_segment)) {
      match.params[pattern_segment.substr(1, pattern_segment.size() - 2)] = segments[i];
    }
  }
  return match;
}

}  // namespace tartarus::http
