// Olympus: forwards a request to a node agent's HTTP server and streams the node's answer
// back to the API client, without holding a thread per stream (Boost.Asio, one io thread
// for all forwards). Used for logs, exec, files and stdin chunks, which live on the node
// running the sandbox. Also hosts the timers that poll the store while a request waits (a queued
// sandbox's logs, `wait=true` creates).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "http/server.h"

namespace tartarus::api {

class NodeProxy {
 public:
  NodeProxy();
  ~NodeProxy();  // stops the io thread; forwards in flight are cancelled

  // Node address: "unix:///path.sock", "/path.sock" or "http://host:port".
  // The node's status, content type and body are streamed to `responder` as they arrive. Without
  // `on_done` the response is finished when the node's body ends. With it, on_done(status) runs
  // instead and the caller appends to the stream and calls Finish(): status is the node's HTTP
  // status when its body ended normally, -1 when the stream broke midway, and 0 when the node
  // could not be reached (a 502 JSON error has then been sent: nothing more to do).
  void Forward(const std::string& address, const std::string& method, const std::string& target,
               std::string body, std::shared_ptr<http::Responder> responder,
               std::function<void(int status)> on_done = nullptr);

  // Runs fn once on the proxy's io thread after `delay` (a waiting request's next check).
  // fn must not block: it posts blocking work to the server's worker pool.
  void After(std::chrono::milliseconds delay, std::function<void()> fn);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tartarus::api
