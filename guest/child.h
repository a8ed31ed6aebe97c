// The guest agent (tartarus-agent, PID 1 in every sandbox): the child side of an exec.
// Resolves the user to run as without NSS (the agent is a static binary, so it parses
// /etc/passwd and /etc/group itself), and turns a forked child into the requested command
// with every capability dropped for good.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/result.h"

namespace tartarus::guest {

struct Credentials {
  bool change = false;  // false: keep the agent's uid/gid
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

// "" (keep the agent's), "name", "uid", "uid:gid", "name:group". A numeric uid without a
// passwd entry runs with gid 0 and no supplementary groups (as Docker does).
Result<Credentials> ResolveUser(const std::string& user,
                                const std::string& passwd_path = "/etc/passwd",
                                const std::string& group_path = "/etc/group");

struct ChildSpec {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string cwd;  // absolute
  Credentials credentials;
  int stdin_fd = -1;
  int stdout_fd = -1;
  int stderr_fd = -1;
  pid_t agent_pid = 0;  // the forking agent: the command dies with it
};

// Runs in the forked child; never returns. Failures before exec are printed on the
// child's stderr as "tartarus: ..." with exit code 126 (127 when the command is not found),
// as a shell would.
[[noreturn]] void RunChild(const ChildSpec& spec);

// Whether this process has `cap` in its effective set.
bool HasEffectiveCapability(int cap);

}  // namespace tartarus::guest
