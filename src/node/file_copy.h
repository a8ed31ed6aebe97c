// Hecatoncheir (the node agent): `tartarus cp`, copying files and directory trees between
// this host and a running sandbox through the guest agent's file operations.
#pragma once

#include <functional>
#include <string>

#include "common/result.h"
#include "protocol/client.h"

namespace tartarus::node {

// As `cp -r`: into an existing remote directory the source keeps its name; otherwise it
// takes the destination's name. Regular files and directories are copied with their
// permission bits; symbolic links and special files are skipped (and reported).
Status CopyIn(protocol::AgentClient& client, const std::string& local_path,
              const std::string& remote_path,
              const std::function<void(const std::string&)>& progress);
Status CopyOut(protocol::AgentClient& client, const std::string& remote_path,
               const std::string& local_path,
               const std::function<void(const std::string&)>& progress);

}  // namespace tartarus::node
