// Hecatoncheir (the node agent): copies a local fd (a terminal's or a pipe's stdin) into
// a running command's stdin on its own thread, and can be stopped at any time, so no
// thread is ever left blocked in read() when the command ends.
#pragma once

#include <thread>

#include "common/unique_fd.h"
#include "protocol/client.h"

namespace tartarus::node {

class StdinPump {
 public:
  // Starts pumping `fd` into `exec` until end of file (then closes the command's stdin),
  // an error, or Stop(). `exec` must outlive the pump.
  StdinPump(int fd, protocol::ExecHandle& exec);
  ~StdinPump() { Stop(); }
  void Stop();

 private:
  void Loop(int fd, protocol::ExecHandle& exec);
  UniqueFd stop_;
  std::thread thread_;
};

}  // namespace tartarus::node
