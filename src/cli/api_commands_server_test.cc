// tartarus CLI, API mode against a fake Olympus: a real http::Server on a Unix socket with
// canned /v1 handlers, so `run`, `exec`, `cp` and the error paths are tested end to end on
// the client side (the real daemon's end-to-end tests live in tests/).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cli/api_client.h"
#include "cli/api_commands.h"
#include "http/server.h"
#include "node/node_agent.h"

namespace tartarus::cli {
namespace {

using http::Request;
using http::Responder;
using http::Response;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A file the command writes to, read back afterwards.
class Capture {
 public:
  Capture() : file_(std::tmpfile()) {}
  ~Capture() { std::fclose(file_); }
  int fd() const { return fileno(file_); }
  std::string Text() const {
    std::string text;
    char buffer[4096];
    ssize_t n;
    off_t offset = 0;
    while ((n = pread(fd(), buffer, sizeof(buffer), offset)) > 0) {
      text.append(buffer, static_cast<size_t>(n));
      offset += n;
    }
    return text;
  }

 private:
  std::FILE* file_;
};

class FakeOlympusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("cli-fake-olympus-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(dir_);
    null_fd_ = open("/dev/null", O_RDONLY);
    io_.stdin_fd = null_fd_;
    io_.stdout_fd = out_.fd();
    io_.stderr_fd = err_.fd();
    connection_.mode = Mode::kApi;
    connection_.origin = "the test";
    connection_.endpoint = "unix://" + (dir_ / "olympus.sock").string();
  }
  void TearDown() override {
    if (server_) server_->Stop();
    close(null_fd_);
    std::filesystem::remove_all(dir_);
  }

  json SandboxJson(const std::string& state) {
    json s = {{"id", "sb1"},
              {"tenant", "admin"},
              {"template", "base"},
              {"runtime", "container"},
              {"state", state},
              {"command", {"echo", "hi"}},
              {"limits",
               {{"millicpus", 1000}, {"memory_bytes", 1}, {"disk_bytes", 1}, {"timeout_ms", 0}}},
              {"labels", json::object()},
              {"attempt", 1},
              {"created_ms", 1}};
    if (state == "queued") s["reason"] = "no node has 1 CPU free";
    return s;
  }

  static void SendJson(const std::shared_ptr<Responder>& responder, int status, const json& body) {
    responder->Send(Response{.status = status, .body = body.dump()});
  }

  // The routes `run` needs. The sandbox stays queued for `queued_for`, then runs; its log
  // stream is `log_lines` cut into 5-byte chunks (events split across chunks).
  void StartServer() {
    server_ = std::make_unique<http::Server>();
    server_->Route("POST", "/v1/sandboxes", [this](Request& request, auto responder) {
      std::lock_guard lock(mu_);
      created_spec_ = json::parse(request.body, nullptr, false);
      idempotency_key_ = request.Header("Idempotency-Key");
      created_at_ = Clock::now();
      SendJson(responder, 201, SandboxJson("queued"));
    });
    server_->Route("GET", "/v1/sandboxes/{id}", [this](Request& request, auto responder) {
      std::lock_guard lock(mu_);
      if (request.params["id"] != "sb1") {
        responder->Send(http::JsonError(404, "not_found",
                                        "sandbox " + request.params["id"] + " not found",
                                        request.request_id));
        return;
      }
      ++gets_;
      bool placed = Clock::now() - created_at_ >= queued_for_;
      SendJson(responder, 200, SandboxJson(placed ? "running" : "queued"));
    });
    http::RouteOptions blocking;
    blocking.blocking = true;  // these may wait for stdin, which other requests bring
    server_->Route(
        "GET", "/v1/sandboxes/{id}/logs",
        [this](Request& request, auto responder) {
          std::unique_lock lock(mu_);
          if (logs_wait_for_stdin_eof_) {
            stdin_cv_.wait_for(lock, std::chrono::seconds(10), [this] {
              return stdin_eof_ && stdin_posts_ >= logs_wait_for_posts_;
            });
          }
          logs_follow_ = request.query["follow"];
          responder->StartStream(200, "application/x-ndjson");
          std::string all;
          for (const auto& line : log_lines_) all += line.dump() + "\n";
          for (size_t i = 0; i < all.size(); i += 5) responder->Write(all.substr(i, 5));
          responder->Finish();
        },
        blocking);
    // Stdin chunks, applied once by offset; the first answer can be made to get lost.
    auto stdin_chunk = [this](Request& request, auto responder) {
      std::lock_guard lock(mu_);
      ++stdin_posts_;
      stdin_exec_ids_.insert(request.params.count("exec") ? request.params["exec"] : "");
      uint64_t offset = std::stoull(request.query["offset"]);
      if (offset > stdin_.size()) {
        responder->Send(http::JsonError(409, "offset_mismatch", "gap", request.request_id));
        return;
      }
      size_t seen = stdin_.size() - offset;
      if (seen < request.body.size()) stdin_.append(request.body.substr(seen));
      if (request.query["eof"] == "true") stdin_eof_ = true;
      stdin_cv_.notify_all();
      if (lose_first_stdin_answer_) {
        lose_first_stdin_answer_ = false;
        responder->Send(http::JsonError(502, "node_unreachable", "lost", request.request_id));
        return;
      }
      SendJson(responder, 200, {{"offset", stdin_.size()}, {"eof", stdin_eof_}});
    };
    server_->Route("POST", "/v1/sandboxes/{id}/stdin", stdin_chunk);
    server_->Route("POST", "/v1/sandboxes/{id}/execs/{exec}/stdin", stdin_chunk);
    server_->Route("DELETE", "/v1/sandboxes/{id}", [this](Request&, auto responder) {
      std::lock_guard lock(mu_);
      ++deletes_;
      responder->Send(Response{.status = 204, .body = ""});
    });
    server_->Route(
        "POST", "/v1/sandboxes/{id}/exec",
        [this](Request& request, auto responder) {
          std::unique_lock lock(mu_);
          exec_request_ = json::parse(request.body, nullptr, false);
          responder->StartStream(200, "application/x-ndjson");
          if (exec_request_.value("stdin", false)) {
            // Like `cat`: the stdin it got, once closed, is its output.
            responder->Write(R"({"event":"started","exec_id":"e1"})"
                             "\n");
            stdin_cv_.wait_for(lock, std::chrono::seconds(30), [this] { return stdin_eof_; });
            responder->Write(node::OutputEvent("stdout", stdin_) + "\n");
            responder->Write(R"({"event":"end","state":"exited","exit_code":0})"
                             "\n");
            responder->Finish();
            return;
          }
          responder->Write(R"({"event":"stdout","data":"in the sandbox\n"})"
                           "\n");
          responder->Write(R"({"event":"end","state":"exited","exit_code":42})"
                           "\n");
          responder->Finish();
        },
        blocking);
    server_->Route("PUT", "/v1/sandboxes/{id}/files", [this](Request& request, auto responder) {
      std::lock_guard lock(mu_);
      files_[request.query["path"]] = request.body;
      file_modes_[request.query["path"]] = request.query["mode"];
      responder->Send(Response{.status = 204, .body = ""});
    });
    server_->Route("GET", "/v1/sandboxes/{id}/files", [this](Request& request, auto responder) {
      std::lock_guard lock(mu_);
      auto it = files_.find(request.query["path"]);
      if (it == files_.end()) {
        responder->Send(http::JsonError(404, "not_found", "no such file", request.request_id));
        return;
      }
      responder->Send(Response{.content_type = "application/octet-stream", .body = it->second});
    });
    ASSERT_TRUE(server_->ListenUnix((dir_ / "olympus.sock").string()));
    server_->Start();
  }

  RunFlags Run(std::vector<std::string> command) {
    RunFlags flags;
    flags.command = std::move(command);
    return flags;
  }

  std::filesystem::path dir_;
  int null_fd_ = -1;
  Capture out_, err_;
  ApiIo io_;
  Connection connection_;
  std::unique_ptr<http::Server> server_;

  std::mutex mu_;
  json created_spec_, exec_request_;
  std::string idempotency_key_, logs_follow_;
  Clock::time_point created_at_;
  std::chrono::milliseconds queued_for_{0};
  int gets_ = 0, deletes_ = 0;
  std::vector<json> log_lines_ = {{{"event", "stdout"}, {"data", "hello\n"}},
                                  {{"event", "stderr"}, {"data_b64", "d2Fybg=="}},  // "warn"
                                  {{"event", "end"}, {"state", "exited"}, {"exit_code", 3}}};
  std::map<std::string, std::string> files_, file_modes_;
  std::condition_variable stdin_cv_;
  std::string stdin_;
  bool stdin_eof_ = false, lose_first_stdin_answer_ = false, logs_wait_for_stdin_eof_ = false;
  int stdin_posts_ = 0, logs_wait_for_posts_ = 0;
  std::set<std::string> stdin_exec_ids_;
};

TEST_F(FakeOlympusTest, RunStreamsOutputAndExitsWithTheCommandsCode) {
  StartServer();
  RunFlags flags = Run({"echo", "hi"});
  flags.memory = "256M";
  EXPECT_EQ(ApiRun(connection_, flags, io_), 3);
  EXPECT_EQ(out_.Text(), "hello\n");
  EXPECT_EQ(err_.Text(), "warn");
  std::lock_guard lock(mu_);
  EXPECT_EQ(created_spec_["command"], json({"echo", "hi"}));
  EXPECT_EQ(created_spec_["memory"], "256M");
  EXPECT_EQ(idempotency_key_.size(), 32u);
  EXPECT_EQ(logs_follow_, "true");
  EXPECT_EQ(deletes_, 0);
}

TEST_F(FakeOlympusTest, RunShowsWhyItWaitsAndRemovesWithRm) {
  queued_for_ = std::chrono::milliseconds(1600);
  StartServer();
  RunFlags flags = Run({"echo", "hi"});
  flags.remove = true;
  EXPECT_EQ(ApiRun(connection_, flags, io_), 3);
  EXPECT_NE(err_.Text().find("sandbox sb1 is queued: no node has 1 CPU free"), std::string::npos)
      << err_.Text();
  std::lock_guard lock(mu_);
  EXPECT_GE(gets_, 2);
  EXPECT_EQ(deletes_, 1);
}

TEST_F(FakeOlympusTest, RunQuietDoesNotShowProgress) {
  queued_for_ = std::chrono::milliseconds(1300);
  StartServer();
  RunFlags flags = Run({"true"});
  flags.quiet = true;
  EXPECT_EQ(ApiRun(connection_, flags, io_), 3);
  EXPECT_EQ(err_.Text(), "warn");
}

TEST_F(FakeOlympusTest, FailedSandboxIs125WithItsError) {
  log_lines_ = {{{"event", "end"},
                 {"state", "failed"},
                 {"exit_code", nullptr},
                 {"error", "template 'nope' is not on any node"}}};
  StartServer();
  EXPECT_EQ(ApiRun(connection_, Run({"true"}), io_), kTartarusFailure);
  EXPECT_EQ(err_.Text(), "tartarus: template 'nope' is not on any node\n");
}

TEST_F(FakeOlympusTest, DetachPrintsTheId) {
  StartServer();
  RunFlags flags = Run({"sleep", "9"});
  flags.detach = true;
  EXPECT_EQ(ApiRun(connection_, flags, io_), 0);
  EXPECT_EQ(out_.Text(), "sb1\n");
}

TEST_F(FakeOlympusTest, RunForwardsPipedStdinOnceEvenWhenAnAnswerIsLost) {
  lose_first_stdin_answer_ = true;  // the chunk is applied, its answer lost: sent again
  logs_wait_for_stdin_eof_ = true;
  logs_wait_for_posts_ = 2;  // the command ends only after the retry
  StartServer();
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  ASSERT_EQ(write(p[1], "data", 4), 4);
  close(p[1]);
  io_.stdin_fd = p[0];
  EXPECT_EQ(ApiRun(connection_, Run({"wc", "-c"}), io_), 3);
  close(p[0]);
  std::lock_guard lock(mu_);
  EXPECT_EQ(created_spec_.value("stdin", false), true) << created_spec_.dump();
  EXPECT_EQ(stdin_, "data");
  EXPECT_TRUE(stdin_eof_);
  EXPECT_GE(stdin_posts_, 2);
  EXPECT_EQ(stdin_exec_ids_, std::set<std::string>{""}) << "the main command's stdin";
  EXPECT_EQ(err_.Text(), "warn") << "a retried chunk is not an error";
}

TEST_F(FakeOlympusTest, NoStdinFromDevNullOrForDetachedRuns) {
  StartServer();
  EXPECT_EQ(ApiRun(connection_, Run({"true"}), io_), 3);  // stdin is /dev/null
  {
    std::lock_guard lock(mu_);
    EXPECT_FALSE(created_spec_.contains("stdin")) << created_spec_.dump();
    EXPECT_EQ(stdin_posts_, 0);
  }
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  io_.stdin_fd = p[0];
  RunFlags flags = Run({"cat"});
  flags.detach = true;
  EXPECT_EQ(ApiRun(connection_, flags, io_), 0);
  close(p[0]);
  close(p[1]);
  std::lock_guard lock(mu_);
  EXPECT_FALSE(created_spec_.contains("stdin")) << created_spec_.dump();
}

TEST_F(FakeOlympusTest, ExecForwardsLargeStdinToTheExecItStarted) {
  StartServer();
  std::string payload(3 << 20, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>((i * 7919) >> 3);
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  std::thread writer([&] {
    size_t off = 0;
    while (off < payload.size()) {
      ssize_t n = write(p[1], payload.data() + off, payload.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    close(p[1]);
  });
  io_.stdin_fd = p[0];
  ApiExecArgs args;
  args.id = "sb1";
  args.command = {"cat"};
  EXPECT_EQ(ApiExec(connection_, args, io_), 0);
  writer.join();
  close(p[0]);
  EXPECT_TRUE(out_.Text() == payload) << "got " << out_.Text().size() << " bytes";
  std::lock_guard lock(mu_);
  EXPECT_EQ(exec_request_.value("stdin", false), true);
  EXPECT_EQ(stdin_exec_ids_, std::set<std::string>{"e1"});
  EXPECT_GE(stdin_posts_, 6) << "3 MiB in chunks of at most 512 KiB, then end of file";
}

TEST_F(FakeOlympusTest, ExecStreamsAndReturnsItsExitCode) {
  StartServer();
  ApiExecArgs args;
  args.id = "sb1";
  args.command = {"ls", "/"};
  args.env = {"A=1"};
  args.timeout = "5s";
  EXPECT_EQ(ApiExec(connection_, args, io_), 42);
  EXPECT_EQ(out_.Text(), "in the sandbox\n");
  std::lock_guard lock(mu_);
  EXPECT_EQ(exec_request_["command"], json({"ls", "/"}));
  EXPECT_EQ(exec_request_["env"], json({"A=1"}));
  EXPECT_EQ(exec_request_["timeout"], "5s");
}

TEST_F(FakeOlympusTest, ApiErrorsCarryTheServersMessageAndRequestId) {
  StartServer();
  auto client = ApiClient::Create(connection_);
  ASSERT_TRUE(client);
  auto missing = client->GetSandbox("nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().message.rfind("sandbox nope not found (request ", 0), 0u)
      << missing.error().message;
}

TEST_F(FakeOlympusTest, CopyInAndOutOfASandbox) {
  StartServer();
  std::string local = (dir_ / "data.csv").string();
  std::ofstream(local) << "a,b\n1,2\n";
  std::filesystem::permissions(local, std::filesystem::perms(0640));
  EXPECT_EQ(ApiCopy(connection_, local, "sb1:/root/"), 0);
  {
    std::lock_guard lock(mu_);
    EXPECT_EQ(files_["/root/data.csv"], "a,b\n1,2\n");
    EXPECT_EQ(file_modes_["/root/data.csv"], "0640");
  }
  std::filesystem::create_directories(dir_ / "out");
  EXPECT_EQ(ApiCopy(connection_, "sb1:/root/data.csv", (dir_ / "out").string()), 0);
  std::ifstream copied(dir_ / "out" / "data.csv");
  std::stringstream text;
  text << copied.rdbuf();
  EXPECT_EQ(text.str(), "a,b\n1,2\n");
  // Directories are refused with a clear message, not half-copied.
  EXPECT_EQ(ApiCopy(connection_, dir_.string(), "sb1:/root/"), kTartarusFailure);
}

TEST(ApiClientUnreachable, ErrorNamesTheHostAndWhereItCameFrom) {
  Connection connection;
  connection.mode = Mode::kApi;
  connection.endpoint = "unix:///nonexistent-dir-for-tartarus-test/olympus.sock";
  connection.origin = "--host";
  auto client = ApiClient::Create(connection);
  ASSERT_TRUE(client);
  auto listed = client->ListSandboxes({});
  ASSERT_FALSE(listed);
  EXPECT_NE(listed.error().message.find("/nonexistent-dir-for-tartarus-test/olympus.sock"),
            std::string::npos)
      << listed.error().message;
  EXPECT_NE(listed.error().message.find("(host from --host)"), std::string::npos);
  EXPECT_EQ(listed.error().message.find('\n'), std::string::npos) << "one line";
}

}  // namespace
}  // namespace tartarus::cli
