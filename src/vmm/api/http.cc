// tartarus-vmm (Tartarus's KVM microVM monitor): the API socket's HTTP/1.1 codec.
#include "vmm/api/http.h"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace tartarus::vmm::api {
namespace {

constexpr std::string_view kCrlf = "\r\n";

bool IsTokenChar(char c) {
  // RFC 9110 tchar.
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string Lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// Printable ASCII only, for echoing parts of a request in an error.
std::string Printable(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 60)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

}  // namespace

std::optional<std::string_view> HttpRequest::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return std::string_view(value);
  }
  return std::nullopt;
}

std::string_view HttpStatusText(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 413:
      return "Payload Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

std::string FormatHttpResponse(const HttpResponse& response, bool keep_alive) {
  std::string out = "HTTP/1.1 " + std::to_string(response.status) + " " +
                    std::string(HttpStatusText(response.status)) + "\r\n";
  out += "Server: tartarus-vmm\r\n";
  if (!response.body.empty()) out += "Content-Type: application/json\r\n";
  // 204 carries no body and so no Content-Length (RFC 9110, 8.6).
  if (response.status != 204) {
    out += "Content-Length: " + std::to_string(response.body.size()) + "\r\n";
  }
  if (!keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
  if (response.status != 204) out += response.body;
  return out;
}

void HttpRequestParser::Feed(std::string_view bytes) {
  if (error_) return;
  buffer_.append(bytes);
}

std::unexpected<Error> HttpRequestParser::Failed(int status, std::string message) {
  error_status_ = status;
  error_ = Error{ErrorCode::kProtocol, std::move(message)};
  buffer_.clear();
  return Fail(*error_);
}

Result<std::optional<HttpRequest>> HttpRequestParser::Next() {
  if (error_) return Fail(*error_);
  // Tolerate empty lines before a request line (RFC 9112, 2.2).
  while (buffer_.starts_with(kCrlf)) buffer_.erase(0, 2);
  const size_t head_end = buffer_.find("\r\n\r\n");
  if (head_end == std::string::npos) {
    if (buffer_.size() > kMaxHeadBytes) {
      return Failed(431,
                    "request line and headers exceed " + std::to_string(kMaxHeadBytes) + " bytes");
    }
    return std::optional<HttpRequest>();
  }
  if (head_end > kMaxHeadBytes) {
    return Failed(431,
                  "request line and headers exceed " + std::to_string(kMaxHeadBytes) + " bytes");
  }
  size_t body_length = 0;
  auto request = ParseHead(std::string_view(buffer_).substr(0, head_end), &body_length);
  if (!request) return Fail(request.error());
  const size_t body_start = head_end + 4;
  if (buffer_.size() - body_start < body_length) {
    return std::optional<HttpRequest>();  // the body is still arriving
  }
  request->body = buffer_.substr(body_start, body_length);
  buffer_.erase(0, body_start + body_length);
  return std::optional<HttpRequest>(std::move(*request));
}

Result<HttpRequest> HttpRequestParser::ParseHead(std::string_view head, size_t* body_length) {
  HttpRequest request;
  size_t line_end = head.find(kCrlf);
  std::string_view line = head.substr(0, line_end);
  head = line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);

  // Request line: METHOD SP target SP HTTP/1.x, single spaces.
  const size_t first_space = line.find(' ');
  const size_t last_space = line.rfind(' ');
  if (first_space == std::string_view::npos || first_space == last_space) {
    return Failed(400, "malformed request line '" + Printable(line) + "'");
  }
  std::string_view method = line.substr(0, first_space);
  std::string_view target = line.substr(first_space + 1, last_space - first_space - 1);
  std::string_view version = line.substr(last_space + 1);
  if (method.empty() || !std::all_of(method.begin(), method.end(), IsTokenChar)) {
    return Failed(400, "malformed method '" + Printable(method) + "'");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    if (!version.starts_with("HTTP/")) {
      return Failed(400, "malformed HTTP version '" + Printable(version) + "'");
    }
    return Failed(505, "unsupported HTTP version '" + Printable(version) + "'");
  }
  if (target.empty() || target.front() != '/') {
    return Failed(400, "request target '" + Printable(target) + "' is not an absolute path");
  }
  for (char c : target) {
    if (c <= 0x20 || c >= 0x7f) return Failed(400, "request target has a control character");
  }
  request.method = std::string(method);
  request.path = std::string(target.substr(0, target.find('?')));
  request.keep_alive = version == "HTTP/1.1";

  std::optional<size_t> content_length;
  while (!head.empty()) {
    line_end = head.find(kCrlf);
    line = head.substr(0, line_end);
    head = line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
    if (request.headers.size() == kMaxHeaders) {
      return Failed(431, "more than " + std::to_string(kMaxHeaders) + " headers");
    }
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return Failed(400, "malformed header line '" + Printable(line) + "'");
    }
    std::string_view name = line.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(), IsTokenChar)) {
      // Also refuses obsolete line folding and "Name :" (RFC 9112, 5.1).
      return Failed(400, "malformed header name '" + Printable(name) + "'");
    }
    std::string_view value = Trim(line.substr(colon + 1));
    for (char c : value) {
      if ((c < 0x20 && c != '\t') || c == 0x7f) {
        return Failed(400, "header " + Printable(name) + " has a control character");
      }
    }
    std::string key = Lower(name);
    if (key == "content-length") {
      size_t length = 0;
      auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
      if (ec != std::errc() || end != value.data() + value.size() || value.empty()) {
        return Failed(400, "invalid Content-Length '" + Printable(value) + "'");
      }
      if (content_length && *content_length != length) {
        return Failed(400, "conflicting Content-Length headers");
      }
      if (length > kMaxBodyBytes) {
        return Failed(413, "body of " + std::to_string(length) + " bytes exceeds " +
                               std::to_string(kMaxBodyBytes));
      }
      content_length = length;
    } else if (key == "transfer-encoding") {
      return Failed(501, "Transfer-Encoding is not supported: send Content-Length");
    } else if (key == "connection") {
      std::string token = Lower(value);
      if (token == "close") request.keep_alive = false;
      if (token == "keep-alive") request.keep_alive = true;
    } else if (key == "expect") {
      return Failed(501, "Expect is not supported");
    }
    request.headers.emplace_back(std::move(key), std::string(value));
  }
  *body_length = content_length.value_or(0);
  return request;
}

}  // namespace tartarus::vmm::api
