// The HTTP server's test double: a Responder that records what a handler answered, so
// Olympus handlers can be unit-tested without sockets. Thread-safe like the real one.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "http/server.h"

namespace tartarus::http {

class FakeResponder final : public Responder {
 public:
  explicit FakeResponder(std::string request_id = "test-request-id")
      : Responder(std::move(request_id)) {}

  void Send(Response response) override {
    std::lock_guard lock(mu_);
    if (closed_ || started_) return;
    started_ = done_ = true;
    response_ = std::move(response);
    cv_.notify_all();
  }
  void StartStream(int status, std::string content_type,
                   std::vector<std::pair<std::string, std::string>> headers = {}) override {
    std::lock_guard lock(mu_);
    if (closed_ || started_) return;
    started_ = streaming_ = true;
    response_ = Response{
        .status = status, .content_type = std::move(content_type), .headers = std::move(headers)};
    cv_.notify_all();
  }
  void Write(std::string chunk) override {
    std::lock_guard lock(mu_);
    if (closed_ || !streaming_ || done_ || chunk.empty()) return;
    chunks_.push_back(chunk);
    response_.body += chunk;
    cv_.notify_all();
  }
  void Finish() override {
    std::lock_guard lock(mu_);
    if (closed_ || !streaming_ || done_) return;
    done_ = true;
    cv_.notify_all();
  }
  bool closed() const override {
    std::lock_guard lock(mu_);
    return closed_;
  }
  void OnClose(std::function<void()> callback) override {
    {
      std::lock_guard lock(mu_);
      if (!closed_) {
        on_close_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }
  size_t pending_bytes() const override { return 0; }

  // Simulates the client going away: closed() turns true and OnClose callbacks run.
  void SimulateClientGone() {
    std::vector<std::function<void()>> callbacks;
    {
      std::lock_guard lock(mu_);
      if (closed_) return;
      closed_ = true;
      callbacks.swap(on_close_);
      cv_.notify_all();
    }
    for (auto& callback : callbacks) callback();
  }

  // Waits until Send or Finish (true) or the timeout (false), for async handlers.
  bool WaitDone(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return done_; });
  }

  // What was answered: Send's response, or a stream's status, headers and body so far.
  Response response() const {
    std::lock_guard lock(mu_);
    return response_;
  }
  std::vector<std::string> chunks() const {
    std::lock_guard lock(mu_);
    return chunks_;
  }
  bool streamed() const {
    std::lock_guard lock(mu_);
    return streaming_;
  }
  bool done() const {
    std::lock_guard lock(mu_);
    return done_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false, streaming_ = false, done_ = false, closed_ = false;
  Response response_;
  std::vector<std::string> chunks_;
  std::vector<std::function<void()>> on_close_;
};

}  // namespace tartarus::http
