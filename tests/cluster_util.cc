// Helpers for control-plane tests (see cluster_util.h).
#include "cluster_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/unique_fd.h"
#include "test_util.h"

namespace tartarus::testing {

namespace fs = std::filesystem;
using nlohmann::json;

ScratchState::ScratchState() {
  std::mt19937_64 rng{std::random_device{}()};
  char name[32];
  snprintf(name, sizeof name, "test-%08llx", static_cast<unsigned long long>(rng() & 0xffffffff));
  // Under the main state directory: same filesystem as the templates, cleaned with it.
  dir_ = StateDir() + "/scratch/" + name;
  fs::create_directories(dir_);
  for (const char* shared : {"templates", "cache"}) {
    fs::create_directories(StateDir() + "/" + shared);
    std::error_code ec;
    fs::create_directory_symlink(StateDir() + "/" + shared, dir_ + "/" + shared, ec);
  }
}

ScratchState::~ScratchState() {
  std::error_code ec;
  // The links first, so remove_all never walks into the shared templates.
  fs::remove(dir_ + "/templates", ec);
  fs::remove(dir_ + "/cache", ec);
  fs::remove_all(dir_, ec);
}

Daemon::Daemon(std::string state_dir, std::string name, std::vector<std::string> args)
    : state_dir_(std::move(state_dir)), name_(std::move(name)), args_(std::move(args)) {}

Daemon::~Daemon() {
  if (running_) (void)Stop(std::chrono::seconds(20));
}

Status Daemon::Start() {
  UniqueFd log(open((state_dir_ + "/" + name_ + ".log").c_str(),
                    O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!log) return FailErrno("opening the daemon log");
  SpawnOptions options;
  options.argv = {TARTARUS_BIN, "--state-dir", state_dir_};
  options.argv.insert(options.argv.end(), args_.begin(), args_.end());
  options.fds = {{0, -1}, {1, log.Get()}, {2, log.Get()}};
  options.new_session = true;
  process_ = TRY(Spawn(options));
  running_ = true;
  return Ok();
}

Status Daemon::WaitHealthy(const std::string& endpoint, std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto exited = process_.TryWait();
    if (exited && *exited) {
      running_ = false;
      return Fail(ErrorCode::kInternal, name_ + " exited: " + (*exited)->Describe() + "\n" + Log());
    }
    auto client =
        http::Client::Create(endpoint, {.connect_timeout = std::chrono::milliseconds(500),
                                        .request_timeout = std::chrono::milliseconds(2000)});
    if (client) {
      auto res = client->Do("GET", "/healthz");
      if (res && res->status == 200) return Ok();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return Fail(ErrorCode::kTimeout, name_ + " did not become healthy at " + endpoint + "\n" + Log());
}

Result<ExitStatus> Daemon::Stop(std::chrono::seconds timeout) {
  if (!running_) return ExitStatus{};
  process_.Signal(SIGTERM);
  running_ = false;
  return process_.WaitFor(timeout);
}

void Daemon::Kill9() {
  if (!running_) return;
  process_.Signal(SIGKILL);
  (void)process_.Wait();
  running_ = false;
}

std::string Daemon::Log() const {
  std::ifstream in(state_dir_ + "/" + name_ + ".log");
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  return s.size() > 8000 ? "..." + s.substr(s.size() - 8000) : s;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

Api::Api(std::string endpoint, std::string token)
    : endpoint_(std::move(endpoint)), token_(std::move(token)) {}

ApiResponse Api::Call(const std::string& method, const std::string& target, const std::string& body,
                      std::vector<std::pair<std::string, std::string>> headers) {
  ApiResponse out;
  auto client = http::Client::Create(
      endpoint_, {.request_timeout = std::chrono::milliseconds(300000), .bearer_token = token_});
  if (!client) {
    out.body = client.error().message;
    return out;
  }
  auto res = client->Do(method, target, body, std::move(headers));
  if (!res) {
    out.body = res.error().message;
    return out;
  }
  out.status = res->status;
  out.body = res->body;
  out.request_id = res->Header("X-Request-Id");
  out.json = json::parse(res->body, nullptr, false);
  if (out.json.is_discarded()) out.json = nullptr;
  return out;
}

ApiResponse Api::Post(const std::string& target, const json& body,
                      std::vector<std::pair<std::string, std::string>> headers) {
  headers.emplace_back("Content-Type", "application/json");
  return Call("POST", target, body.dump(), std::move(headers));
}

std::vector<json> Api::Events(const std::string& method, const std::string& target,
                              const std::string& body, int* status) {
  std::vector<json> events;
  auto client = http::Client::Create(
      endpoint_, {.request_timeout = std::chrono::milliseconds(60000), .bearer_token = token_});
  if (!client) return events;
  std::string pending;
  auto res = client->Stream(method, target, body, [&](std::string_view chunk) {
    pending.append(chunk);
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      json event = json::parse(pending.substr(0, nl), nullptr, false);
      events.push_back(event.is_discarded() ? json{{"unparsed", pending.substr(0, nl)}} : event);
      pending.erase(0, nl + 1);
    }
    return true;
  });
  if (status) *status = res ? res->status : 0;
  if (res && (res->status < 200 || res->status >= 300)) {
    json err = json::parse(res->body, nullptr, false);
    events.push_back(err.is_discarded() ? json{{"unparsed", res->body}} : err);
  }
  return events;
}

json Api::WaitForState(const std::string& id, const std::vector<std::string>& states,
                       std::chrono::seconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  json last;
  while (std::chrono::steady_clock::now() < deadline) {
    auto res = Call("GET", "/v1/sandboxes/" + id);
    if (res.status == 200) {
      last = res.json;
      for (const auto& s : states) {
        if (last.value("state", "") == s) return last;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return last;
}

namespace {

json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json out = json::object();
      for (const auto& kv : node) out[kv.first.Scalar()] = YamlToJson(kv.second);
      return out;
    }
    case YAML::NodeType::Sequence: {
      json out = json::array();
      for (const auto& item : node) out.push_back(YamlToJson(item));
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted
      if (s == "true") return true;
      if (s == "false") return false;
      char* end = nullptr;
      long long v = strtoll(s.c_str(), &end, 10);
      if (!s.empty() && *end == '\0') return v;
      return s;
    }
    default:
      return nullptr;
  }
}

const json& Spec() {
  static const json spec = YamlToJson(YAML::LoadFile(TARTARUS_SOURCE_DIR "/docs/openapi.yaml"));
  return spec;
}

std::string Check(const json& value, const json& schema, const std::string& where) {
  if (schema.contains("$ref")) {
    std::string ref = schema["$ref"].get<std::string>();
    std::string name = ref.substr(ref.rfind('/') + 1);
    return Check(value, Spec()["components"]["schemas"][name], where);
  }
  if (value.is_null()) {
    return schema.value("nullable", false) ? "" : where + ": null but not nullable";
  }
  std::string type = schema.value("type", "");
  if (type == "object") {
    if (!value.is_object()) return where + ": expected an object";
    for (const auto& field : schema.value("required", json::array())) {
      if (!value.contains(field.get<std::string>())) {
        return where + ": missing required field '" + field.get<std::string>() + "'";
      }
    }
    if (schema.contains("properties")) {
      for (auto it = schema["properties"].begin(); it != schema["properties"].end(); ++it) {
        if (value.contains(it.key())) {
          std::string e = Check(value[it.key()], it.value(), where + "." + it.key());
          if (!e.empty()) return e;
        }
      }
      if (schema.value("additionalProperties", true) == false) {
        for (auto it = value.begin(); it != value.end(); ++it) {
          if (!schema["properties"].contains(it.key()))
            return where + ": undocumented field '" + it.key() + "'";
        }
      }
    }
    if (schema.contains("additionalProperties") && schema["additionalProperties"].is_object()) {
      for (auto it = value.begin(); it != value.end(); ++it) {
        std::string e = Check(it.value(), schema["additionalProperties"], where + "." + it.key());
        if (!e.empty()) return e;
      }
    }
  } else if (type == "array") {
    if (!value.is_array()) return where + ": expected an array";
    for (size_t i = 0; i < value.size(); ++i) {
      std::string e = Check(value[i], schema["items"], where + "[" + std::to_string(i) + "]");
      if (!e.empty()) return e;
    }
  } else if (type == "string") {
    if (!value.is_string()) return where + ": expected a string, got " + value.dump();
    if (schema.contains("enum")) {
      bool ok = false;
      for (const auto& v : schema["enum"]) ok = ok || v == value;
      if (!ok) return where + ": '" + value.get<std::string>() + "' is not in the documented enum";
    }
  } else if (type == "integer") {
    if (!value.is_number_integer()) return where + ": expected an integer, got " + value.dump();
  } else if (type == "boolean") {
    if (!value.is_boolean()) return where + ": expected a boolean, got " + value.dump();
  }
  return "";
}

}  // namespace

std::string CheckSchema(const json& value, const std::string& schema_name) {
  const json& schemas = Spec()["components"]["schemas"];
  if (!schemas.contains(schema_name)) return "no schema named " + schema_name + " in openapi.yaml";
  return Check(value, schemas[schema_name], schema_name);
}

std::vector<std::pair<std::string, std::string>> DocumentedOperations() {
  std::vector<std::pair<std::string, std::string>> ops;
  for (auto path = Spec()["paths"].begin(); path != Spec()["paths"].end(); ++path) {
    for (auto op = path.value().begin(); op != path.value().end(); ++op) {
      if (op.key() == "parameters") continue;
      std::string method = op.key();
      for (auto& c : method) c = static_cast<char>(toupper(c));
      ops.emplace_back(method, path.key());
    }
  }
  return ops;
}

namespace {
std::string DecodeBase64(const std::string& text) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    if (c == '=') break;
    size_t v = kAlphabet.find(c);
    if (v == std::string::npos) return out + "<bad base64>";
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out.push_back(static_cast<char>((bits >> count) & 0xff));
    }
  }
  return out;
}
}  // namespace

ApiResponse PostStdin(Api& api, const std::string& sandbox, const std::string& exec,
                      uint64_t offset, const std::string& data, bool eof) {
  std::string target = "/v1/sandboxes/" + sandbox + (exec.empty() ? "" : "/execs/" + exec) +
                       "/stdin?offset=" + std::to_string(offset) + (eof ? "&eof=true" : "");
  return api.Call("POST", target, data, {{"Content-Type", "application/octet-stream"}});
}

ExecStream::ExecStream(const std::string& endpoint, const std::string& sandbox,
                       const json& request) {
  thread_ = std::thread([this, endpoint, sandbox, request] {
    auto client = http::Client::Create(endpoint, {.request_timeout = std::chrono::minutes(2)});
    if (!client) return Done();
    std::string pending;
    auto res = client->Stream("POST", "/v1/sandboxes/" + sandbox + "/exec", request.dump(),
                              [&](std::string_view chunk) {
                                pending.append(chunk);
                                size_t nl;
                                while ((nl = pending.find('\n')) != std::string::npos) {
                                  json event = json::parse(pending.substr(0, nl), nullptr, false);
                                  pending.erase(0, nl + 1);
                                  if (event.is_discarded()) continue;
                                  std::lock_guard lock(mu_);
                                  if (event["event"] == "started")
                                    exec_id_ = event.value("exec_id", "");
                                  if (event["event"] == "stdout") {
                                    out_ += event.contains("data_b64")
                                                ? DecodeBase64(event["data_b64"])
                                                : event.value("data", "");
                                  }
                                  end_ = event;
                                  changed_.notify_all();
                                }
                                return true;
                              },
                              {{"Content-Type", "application/json"}});
    {
      std::lock_guard lock(mu_);
      status_ = res ? res->status : 0;
    }
    Done();
  });
}

ExecStream::~ExecStream() { Join(); }

void ExecStream::Join() {
  if (thread_.joinable()) thread_.join();
}

void ExecStream::Done() {
  std::lock_guard lock(mu_);
  done_ = true;
  changed_.notify_all();
}

bool ExecStream::WaitFor(
    const std::function<bool(const std::string& exec_id, const std::string& out)>& ready,
    std::chrono::seconds timeout) {
  std::unique_lock lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return ready(exec_id_, out_) || done_; }) &&
         ready(exec_id_, out_);
}

std::string ExecStream::WaitForId() {
  WaitFor([](const std::string& exec_id, const std::string&) { return !exec_id.empty(); });
  return exec_id();
}

std::string ExecStream::exec_id() {
  std::lock_guard lock(mu_);
  return exec_id_;
}

std::string ExecStream::OutSoFar() {
  std::lock_guard lock(mu_);
  return out_;
}

}  // namespace tartarus::testing
