// tartarus CLI, Olympus client: requests, error mapping and response parsing.
#include "cli/api_client.h"

#include "http/client.h"
#include "http/url.h"

namespace tartarus::cli {
namespace {

using nlohmann::json;
using Headers = std::vector<std::pair<std::string, std::string>>;

// Reads fields of one response object, keeping the first type error. Absent and null
// fields read as empty: the server may leave optional fields out.
class FieldReader {
 public:
  FieldReader(const json& object, std::string what) : object_(object), what_(std::move(what)) {
    if (!object_.is_object()) Bad("", "not a JSON object");
  }

  std::string String(const char* key, bool required = false) {
    const json* value = Find(key, required);
    if (!value) return "";
    if (!value->is_string()) {
      Bad(key, "not a string");
      return "";
    }
    return value->get<std::string>();
  }
  int64_t Int(const char* key, bool required = false) {
    const json* value = Find(key, required);
    if (!value) return 0;
    if (!value->is_number_integer()) {
      Bad(key, "not an integer");
      return 0;
    }
    return value->get<int64_t>();
  }
  std::optional<int64_t> OptionalInt(const char* key) {
    const json* value = Find(key, false);
    if (!value) return std::nullopt;
    if (!value->is_number_integer()) {
      Bad(key, "not an integer");
      return std::nullopt;
    }
    return value->get<int64_t>();
  }
  bool Bool(const char* key) {
    const json* value = Find(key, false);
    if (!value) return false;
    if (!value->is_boolean()) {
      Bad(key, "not a boolean");
      return false;
    }
    return value->get<bool>();
  }
  std::vector<std::string> Strings(const char* key, bool required = false) {
    std::vector<std::string> out;
    const json* value = Find(key, required);
    if (!value) return out;
    if (!value->is_array()) {
      Bad(key, "not an array");
      return out;
    }
    for (const auto& item : *value) {
      if (!item.is_string()) {
        Bad(key, "has an item that is not a string");
        return out;
      }
      out.push_back(item.get<std::string>());
    }
    return out;
  }
  std::map<std::string, std::string> StringMap(const char* key) {
    std::map<std::string, std::string> out;
    const json* value = Find(key, false);
    if (!value) return out;
    if (!value->is_object()) {
      Bad(key, "not an object");
      return out;
    }
    for (const auto& [k, v] : value->items()) {
      if (!v.is_string()) {
        Bad(key, "has a value that is not a string");
        return out;
      }
      out[k] = v.get<std::string>();
    }
    return out;
  }
  const json* Object(const char* key) {
    const json* value = Find(key, false);
    if (value && !value->is_object()) {
      Bad(key, "not an object");
      return nullptr;
    }
    return value;
  }
  Status status() const {
    if (error_) return Fail(*error_);
    return Ok();
  }

 private:
  const json* Find(const char* key, bool required) {
    if (error_ || !object_.is_object()) return nullptr;
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) {
      if (required) Bad(key, "missing");
      return nullptr;
    }
    return &*it;
  }
  void Bad(std::string_view key, std::string_view why) {
    if (error_) return;
    std::string where = what_;
    if (!key.empty()) where += "." + std::string(key);
    error_ = Error{ErrorCode::kProtocol,
                   "unexpected response from the server: " + where + ": " + std::string(why)};
  }

  const json& object_;
  std::string what_;
  std::optional<Error> error_;
};

ErrorCode CodeForStatus(int status) {
  switch (status) {
    case 400:
      return ErrorCode::kInvalidArgument;
    case 413:
      return ErrorCode::kResourceExhausted;
    case 401:
    case 403:
      return ErrorCode::kPermissionDenied;
    case 404:
      return ErrorCode::kNotFound;
    case 409:
      return ErrorCode::kFailedPrecondition;
    case 429:
      return ErrorCode::kResourceExhausted;
    case 503:
      return ErrorCode::kFailedPrecondition;
    case 504:
      return ErrorCode::kTimeout;
    default:
      return ErrorCode::kInternal;
  }
}

// A list response: {"items": [...]}; each item goes through `parse`.
template <class T, class ParseFn>
Result<std::vector<T>> ParseItems(const json& body, const char* what, ParseFn parse) {
  if (!body.is_object() || !body.contains("items") || !body["items"].is_array()) {
    return Fail(ErrorCode::kProtocol,
                std::string("unexpected response from the server: ") + what + ": no items array");
  }
  std::vector<T> items;
  for (const auto& item : body["items"]) items.push_back(TRY(parse(item)));
  return items;
}

Result<ApiTenant> ParseTenant(const json& object) {
  FieldReader r(object, "tenant");
  ApiTenant t;
  t.id = r.String("id", true);
  t.name = r.String("name", true);
  t.created_ms = r.Int("created_ms");
  t.raw = object;
  TRY(r.status());
  return t;
}

Result<ApiErrorRecord> ParseErrorRecord(const json& object) {
  FieldReader r(object, "error record");
  ApiErrorRecord e;
  e.id = r.String("id", true);
  e.tenant = r.String("tenant");
  e.sandbox = r.String("sandbox");
  e.node = r.String("node");
  e.kind = r.String("kind", true);
  e.message = r.String("message", true);
  e.created_ms = r.Int("created_ms");
  e.raw = object;
  TRY(r.status());
  return e;
}

Result<ApiJob> ParseJob(const json& object) {
  FieldReader r(object, "job");
  ApiJob j;
  j.id = r.String("id", true);
  j.state = r.String("state", true);
  j.priority = r.Int("priority");
  j.attempts = r.Int("attempts");
  j.max_attempts = r.Int("max_attempts");
  j.node = r.String("node");
  j.last_error = r.String("last_error");
  j.reason = r.String("reason");
  j.available_ms = r.Int("available_ms");
  j.raw = object;
  TRY(r.status());
  return j;
}

std::string Query(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string query;
  for (const auto& [key, value] : params) {
    if (value.empty()) continue;
    query += (query.empty() ? "?" : "&") + http::UrlEncode(key) + "=" + http::UrlEncode(value);
  }
  return query;
}

std::string SandboxPath(const std::string& id) { return "/v1/sandboxes/" + http::UrlEncode(id); }

}  // namespace

Error ApiError(int status, std::string_view body, std::string_view request_id_header) {
  std::string message, request_id(request_id_header);
  json parsed = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object()) {
    const json& error = parsed["error"];
    if (error.contains("message") && error["message"].is_string()) {
      message = error["message"].get<std::string>();
    }
    if (error.contains("request_id") && error["request_id"].is_string() &&
        !error["request_id"].get<std::string>().empty()) {
      request_id = error["request_id"].get<std::string>();
    }
  }
  if (message.empty()) {
    // Not our error shape (a proxy in between?): the status and the body's first line.
    std::string first_line(body.substr(0, body.find('\n')));
    if (first_line.size() > 200) first_line = first_line.substr(0, 200) + "...";
    message = "the server answered HTTP " + std::to_string(status) +
              (first_line.empty() ? "" : ": " + first_line);
  }
  if (status == 401) message += "; pass a token with --token or TARTARUS_TOKEN";
  if (!request_id.empty()) message += " (request " + request_id + ")";
  return Error{CodeForStatus(status), message};
}

Result<ApiSandbox> ParseSandbox(const json& object) {
  FieldReader r(object, "sandbox");
  ApiSandbox s;
  s.id = r.String("id", true);
  s.tenant = r.String("tenant");
  s.template_name = r.String("template");
  s.runtime = r.String("runtime");
  s.state = r.String("state", true);
  s.command = r.Strings("command");
  if (const json* limits = r.Object("limits")) {
    FieldReader l(*limits, "sandbox.limits");
    s.limits.millicpus = l.Int("millicpus");
    s.limits.memory_bytes = l.Int("memory_bytes");
    s.limits.disk_bytes = l.Int("disk_bytes");
    s.limits.timeout_ms = l.Int("timeout_ms");
    TRY(l.status());
  }
  s.labels = r.StringMap("labels");
  s.node = r.String("node");
  s.attempt = r.Int("attempt");
  if (auto code = r.OptionalInt("exit_code")) s.exit_code = static_cast<int>(*code);
  s.signal = static_cast<int>(r.Int("signal"));
  s.timed_out = r.Bool("timed_out");
  s.kill_requested = r.Bool("kill_requested");
  s.error = r.String("error");
  s.reason = r.String("reason");
  s.created_ms = r.Int("created_ms");
  s.started_ms = r.Int("started_ms");
  s.finished_ms = r.Int("finished_ms");
  s.raw = object;
  TRY(r.status());
  return s;
}

Result<ApiNode> ParseNode(const json& object) {
  FieldReader r(object, "node");
  ApiNode n;
  n.id = r.String("id", true);
  n.name = r.String("name");
  n.address = r.String("address");
  n.state = r.String("state");
  n.millicpus = r.Int("millicpus");
  n.memory_bytes = r.Int("memory_bytes");
  n.reserved_millicpus = r.Int("reserved_millicpus");
  n.reserved_memory_bytes = r.Int("reserved_memory_bytes");
  n.active_jobs = r.Int("active_jobs");
  n.lease_ms = r.Int("lease_ms");
  n.heartbeat_ms = r.Int("heartbeat_ms");
  n.labels = r.StringMap("labels");
  n.runtimes = r.Strings("runtimes");
  n.templates = r.Strings("templates");
  n.raw = object;
  TRY(r.status());
  return n;
}

Result<ApiToken> ParseToken(const json& object) {
  FieldReader r(object, "token");
  ApiToken t;
  t.id = r.String("id", true);
  t.tenant = r.String("tenant");
  t.name = r.String("name");
  t.secret = r.String("secret");
  t.created_ms = r.Int("created_ms");
  t.revoked_ms = r.OptionalInt("revoked_ms");
  t.raw = object;
  TRY(r.status());
  return t;
}

Result<ApiPolicy> ParsePolicy(const json& object) {
  FieldReader r(object, "policy");
  ApiPolicy p;
  p.name = r.String("name", true);
  p.tenant = r.String("tenant");
  p.template_name = r.String("template");
  p.yaml = r.String("yaml");
  p.updated_ms = r.Int("updated_ms");
  p.raw = object;
  TRY(r.status());
  return p;
}

ApiClient::ApiClient(Connection connection, std::unique_ptr<http::Client> client)
    : connection_(std::move(connection)), client_(std::move(client)) {}
ApiClient::ApiClient(ApiClient&&) noexcept = default;
ApiClient& ApiClient::operator=(ApiClient&&) noexcept = default;
ApiClient::~ApiClient() = default;

Result<ApiClient> ApiClient::Create(const Connection& connection) {
  http::ClientOptions options;
  options.bearer_token = connection.token;
  auto client = http::Client::Create(connection.endpoint, options);
  if (!client) return Fail(client.error().Context(connection.origin));
  return ApiClient(connection, std::make_unique<http::Client>(std::move(*client)));
}

void ApiClient::Cancel() { client_->Cancel(); }

Error ApiClient::Transport(const Error& error) const {
  // "cannot reach http://h:7777: connection refused (host from --host)": one line that
  // names the host and where it was configured.
  if (error.code == ErrorCode::kCancelled) return error;
  std::string message = error.message;
  if (message.find(connection_.endpoint) == std::string::npos) {
    message = connection_.endpoint + ": " + message;
  }
  return Error{error.code, message + " (host from " + connection_.origin + ")"};
}

Result<std::string> ApiClient::Call(const std::string& method, const std::string& target,
                                    const std::string& body, const std::string& content_type,
                                    Headers headers) {
  if (!content_type.empty()) headers.emplace_back("Content-Type", content_type);
  auto response = client_->Do(method, target, body, std::move(headers));
  if (!response) return Fail(Transport(response.error()));
  if (response->status < 200 || response->status > 299) {
    return Fail(ApiError(response->status, response->body, response->Header("X-Request-Id")));
  }
  return std::move(response->body);
}

Result<json> ApiClient::CallJson(const std::string& method, const std::string& target,
                                 const std::string& body, const std::string& content_type,
                                 Headers headers) {
  std::string text = TRY(Call(method, target, body, content_type, std::move(headers)));
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return Fail(ErrorCode::kProtocol,
                "unexpected response from the server to " + method + " " + target + ": not JSON");
  }
  return parsed;
}

Result<StreamEvent> ApiClient::StreamEvents(const std::string& method, const std::string& target,
                                            const std::string& body, const EventFn& on_event) {
  bool stopped = false;
  Status decode_status;
  EventDecoder decoder([&](const StreamEvent& event) {
    if (event.kind == StreamEvent::Kind::kOther || event.kind == StreamEvent::Kind::kEnd) return;
    if (!stopped && on_event && !on_event(event)) stopped = true;
  });
  Headers headers;
  if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
  auto response = client_->Stream(
      method, target, body,
      [&](std::string_view chunk) {
        decode_status = decoder.Feed(chunk);
        return decode_status.has_value() && !stopped && !decoder.saw_end();
      },
      std::move(headers));
  if (!response) return Fail(Transport(response.error()));
  if (response->status < 200 || response->status > 299) {
    return Fail(ApiError(response->status, response->body, response->Header("X-Request-Id")));
  }
  if (!decode_status) return Fail(decode_status.error());
  if (stopped) return Fail(ErrorCode::kCancelled, "stopped reading the stream");
  if (!decoder.saw_end()) TRY(decoder.Finish());
  if (!decoder.saw_end()) {
    return Fail(ErrorCode::kProtocol,
                "the stream from " + connection_.endpoint + " ended before its end event");
  }
  return *decoder.end();
}

Result<ApiSandbox> ApiClient::CreateSandbox(const json& spec, const std::string& idempotency_key) {
  Headers headers;
  if (!idempotency_key.empty()) headers.emplace_back("Idempotency-Key", idempotency_key);
  json body = TRY(CallJson("POST", "/v1/sandboxes", spec.dump(), "application/json", headers));
  return ParseSandbox(body);
}

Result<ApiSandbox> ApiClient::GetSandbox(const std::string& id) {
  return ParseSandbox(TRY(CallJson("GET", SandboxPath(id))));
}

Result<SandboxPage> ApiClient::ListSandboxes(const SandboxFilter& filter) {
  std::string query = Query({{"state", filter.state},
                             {"template", filter.template_name},
                             {"node", filter.node},
                             {"limit", filter.limit > 0 ? std::to_string(filter.limit) : ""},
                             {"page_token", filter.page_token}});
  json body = TRY(CallJson("GET", "/v1/sandboxes" + query));
  SandboxPage page;
  page.items = TRY(ParseItems<ApiSandbox>(body, "sandbox list", ParseSandbox));
  if (body.contains("next_page_token") && body["next_page_token"].is_string()) {
    page.next_page_token = body["next_page_token"].get<std::string>();
  }
  return page;
}

Result<ApiSandbox> ApiClient::KillSandbox(const std::string& id) {
  return ParseSandbox(TRY(CallJson("POST", SandboxPath(id) + "/kill")));
}

Status ApiClient::DeleteSandbox(const std::string& id) {
  TRY(Call("DELETE", SandboxPath(id)));
  return Ok();
}

Result<StreamEvent> ApiClient::StreamLogs(const std::string& id, bool follow,
                                          const EventFn& on_event) {
  return StreamEvents("GET", SandboxPath(id) + "/logs" + (follow ? "?follow=true" : ""), "",
                      on_event);
}

Result<StreamEvent> ApiClient::Exec(const std::string& id, const json& request,
                                    const EventFn& on_event) {
  return StreamEvents("POST", SandboxPath(id) + "/exec", request.dump(), on_event);
}

StdinAnswer ApiClient::SendStdin(const std::string& id, const std::string& exec_id, uint64_t offset,
                                 std::string_view data, bool eof) {
  std::string target = SandboxPath(id);
  if (!exec_id.empty()) target += "/execs/" + http::UrlEncode(exec_id);
  target += "/stdin?offset=" + std::to_string(offset) + (eof ? "&eof=true" : "");
  StdinAnswer answer;
  auto response = client_->Do("POST", target, std::string(data),
                              {{"Content-Type", "application/octet-stream"}});
  if (!response) {
    answer.error = Transport(response.error());
    return answer;
  }
  answer.status = response->status;
  json parsed = json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (response->status == 200) {
    if (parsed.is_object() && parsed.contains("offset") && parsed["offset"].is_number_unsigned()) {
      answer.offset = parsed["offset"].get<uint64_t>();
      return answer;
    }
    answer.status = 0;
    answer.error = Error{ErrorCode::kProtocol, "stdin: the answer has no offset"};
    return answer;
  }
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object() &&
      parsed["error"].contains("code") && parsed["error"]["code"].is_string()) {
    answer.code = parsed["error"]["code"].get<std::string>();
  }
  answer.error = ApiError(response->status, response->body, response->Header("X-Request-Id"));
  return answer;
}

Result<std::string> ApiClient::ReadFile(const std::string& id, const std::string& path) {
  return Call("GET", SandboxPath(id) + "/files" + Query({{"path", path}}));
}

Status ApiClient::WriteFile(const std::string& id, const std::string& path, std::string_view data,
                            int mode) {
  char octal[16];
  std::snprintf(octal, sizeof(octal), "%04o", mode & 07777);
  TRY(Call("PUT", SandboxPath(id) + "/files" + Query({{"path", path}, {"mode", octal}}),
           std::string(data), "application/octet-stream"));
  return Ok();
}

Result<std::vector<ApiNode>> ApiClient::ListNodes() {
  return ParseItems<ApiNode>(TRY(CallJson("GET", "/v1/nodes")), "node list", ParseNode);
}

Result<ApiNode> ApiClient::NodeAction(const std::string& id, const std::string& action) {
  return ParseNode(TRY(CallJson("POST", "/v1/nodes/" + http::UrlEncode(id) + "/" + action)));
}

Result<ApiToken> ApiClient::CreateToken(const std::string& tenant, const std::string& name) {
  json body = {{"tenant", tenant}};
  if (!name.empty()) body["name"] = name;
  return ParseToken(TRY(CallJson("POST", "/v1/tokens", body.dump(), "application/json")));
}

Result<std::vector<ApiToken>> ApiClient::ListTokens() {
  return ParseItems<ApiToken>(TRY(CallJson("GET", "/v1/tokens")), "token list", ParseToken);
}

Status ApiClient::RevokeToken(const std::string& id) {
  TRY(Call("DELETE", "/v1/tokens/" + http::UrlEncode(id)));
  return Ok();
}

Result<ApiPolicy> ApiClient::PutPolicy(const std::string& name, const std::string& yaml) {
  return ParsePolicy(
      TRY(CallJson("PUT", "/v1/policies/" + http::UrlEncode(name), yaml, "application/yaml")));
}

Result<std::vector<ApiPolicy>> ApiClient::ListPolicies() {
  return ParseItems<ApiPolicy>(TRY(CallJson("GET", "/v1/policies")), "policy list", ParsePolicy);
}

Result<ApiPolicy> ApiClient::GetPolicy(const std::string& name) {
  return ParsePolicy(TRY(CallJson("GET", "/v1/policies/" + http::UrlEncode(name))));
}

Status ApiClient::DeletePolicy(const std::string& name) {
  TRY(Call("DELETE", "/v1/policies/" + http::UrlEncode(name)));
  return Ok();
}

Result<std::vector<ApiTenant>> ApiClient::ListTenants() {
  return ParseItems<ApiTenant>(TRY(CallJson("GET", "/v1/tenants")), "tenant list", ParseTenant);
}

Result<std::vector<ApiErrorRecord>> ApiClient::ListErrors(const ErrorFilter& filter) {
  std::string query = Query({{"sandbox", filter.sandbox},
                             {"kind", filter.kind},
                             {"limit", filter.limit > 0 ? std::to_string(filter.limit) : ""}});
  return ParseItems<ApiErrorRecord>(TRY(CallJson("GET", "/v1/errors" + query)), "error list",
                                    ParseErrorRecord);
}

Result<ApiQueueStats> ApiClient::QueueStats() {
  json body = TRY(CallJson("GET", "/v1/queue"));
  FieldReader r(body, "queue stats");
  ApiQueueStats stats;
  stats.queued = r.Int("queued", true);
  stats.assigned = r.Int("assigned", true);
  stats.running = r.Int("running", true);
  stats.done = r.Int("done", true);
  stats.dead = r.Int("dead", true);
  stats.raw = body;
  TRY(r.status());
  return stats;
}

Result<std::vector<ApiJob>> ApiClient::DeadJobs() {
  return ParseItems<ApiJob>(TRY(CallJson("GET", "/v1/queue/dead")), "dead job list", ParseJob);
}

Result<ApiSandbox> ApiClient::ReplayJob(const std::string& id) {
  return ParseSandbox(TRY(CallJson("POST", "/v1/queue/dead/" + http::UrlEncode(id) + "/replay")));
}

}  // namespace tartarus::cli
