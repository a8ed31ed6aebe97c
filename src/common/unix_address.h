// A Unix socket's address for a filesystem path, shared by the components that listen on or
// connect to one (tartarus-vmm's API and vsock, the microvm backend).
#pragma once

#include <sys/un.h>

#include <cstring>
#include <string>

#include "common/result.h"

namespace tartarus {

// `path` as a sockaddr_un, or kInvalidArgument naming it when it is empty or longer than
// sun_path holds (107 bytes and the terminating NUL).
inline Result<sockaddr_un> UnixSocketAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return Fail(ErrorCode::kInvalidArgument,
                "unix socket path '" + path + "' is empty or longer than " +
                    std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace tartarus
