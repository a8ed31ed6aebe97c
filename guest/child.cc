// The guest agent: the child side of an exec (see child.h).
#include "guest/child.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string_view>

namespace tartarus::guest {
namespace {

constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

std::optional<uint32_t> ParseId(std::string_view text) {
  if (text.empty() || text.size() > 10) return std::nullopt;
  uint32_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::vector<std::string_view> SplitColons(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  for (;;) {
    size_t colon = line.find(':', start);
    fields.push_back(line.substr(start, colon == std::string_view::npos ? colon : colon - start));
    if (colon == std::string_view::npos) break;
    start = colon + 1;
  }
  return fields;
}

struct PasswdEntry {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
};

// Finds a passwd entry by name (or by uid when `name` is empty).
std::optional<PasswdEntry> FindPasswd(const std::string& path, const std::string& name,
                                      std::optional<uid_t> uid) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto fields = SplitColons(line);
    if (fields.size() < 4) continue;
    auto entry_uid = ParseId(fields[2]);
    auto entry_gid = ParseId(fields[3]);
    if (!entry_uid || !entry_gid) continue;
    if ((!name.empty() && fields[0] == name) || (name.empty() && uid && *uid == *entry_uid)) {
      return PasswdEntry{std::string(fields[0]), *entry_uid, *entry_gid};
    }
  }
  return std::nullopt;
}

// Group id of a named group, or the supplementary groups listing `member`.
std::optional<gid_t> FindGroup(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto fields = SplitColons(line);
    if (fields.size() < 3 || fields[0] != name) continue;
    if (auto gid = ParseId(fields[2])) return *gid;
  }
  return std::nullopt;
}

std::vector<gid_t> GroupsOf(const std::string& path, const std::string& member, gid_t primary) {
  std::vector<gid_t> groups{primary};
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line) && groups.size() < 1024) {
    auto fields = SplitColons(line);
    if (fields.size() < 4) continue;
    auto gid = ParseId(fields[2]);
    if (!gid) continue;
    std::string_view members = fields[3];
    size_t start = 0;
    while (start <= members.size()) {
      size_t comma = members.find(',', start);
      std::string_view m = members.substr(
          start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
      if (m == member && *gid != primary) groups.push_back(*gid);
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
  }
  return groups;
}

// Plain write(2) only: this runs between fork and exec.
void Print(std::string_view text) {
  while (!text.empty()) {
    ssize_t n = write(STDERR_FILENO, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

[[noreturn]] void Die(int code, std::string_view what, std::string_view detail) {
  std::string message = "tartarus: ";
  message.append(what).append(": ").append(detail).append("\n");
  Print(message);
  _exit(code);
}

struct CapData {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
};

// Drops every capability so that not even uid 0 regains any on exec. Fails closed: a
// child whose privileges could not be dropped never runs the command.
void DropPrivileges(const Credentials& credentials) {
  if (HasEffectiveCapability(CAP_SETPCAP)) {
    // The bounding set caps what any later exec (a setuid binary, file caps) can gain.
    for (int cap = 0; cap <= 63; ++cap) {
      if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
        if (errno == EINVAL) break;  // past the kernel's last capability
        Die(126, "cannot drop capability bounding set", std::strerror(errno));
      }
    }
    // NOROOT: uid 0 gains no capabilities on exec. NO_SETUID_FIXUP lets us keep the caps
    // we still need for setuid below; we clear them explicitly with capset afterwards.
    unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                         SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                         SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    unsigned long core_bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                              SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED;
    // gVisor rejects the ambient bits, and some securebits altogether (EINVAL). The empty
    // bounding set above already keeps uid 0 from gaining anything on exec, so an
    // unsupported securebit is not a reason to refuse the command; any other error is.
    if (prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) < 0 &&
        prctl(PR_SET_SECUREBITS, core_bits, 0, 0, 0) < 0 && errno != EINVAL) {
      Die(126, "cannot set securebits", std::strerror(errno));
    }
  }
  // Old kernels without ambient capabilities answer EINVAL: nothing to clear then.
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) {
    Die(126, "cannot clear ambient capabilities", std::strerror(errno));
  }
  if (credentials.change) {
    if (setgroups(credentials.groups.size(), credentials.groups.data()) < 0) {
      Die(126, "setgroups", std::strerror(errno));
    }
    if (setresgid(credentials.gid, credentials.gid, credentials.gid) < 0) {
      Die(126, "setgid " + std::to_string(credentials.gid), std::strerror(errno));
    }
    if (setresuid(credentials.uid, credentials.uid, credentials.uid) < 0) {
      Die(126, "setuid " + std::to_string(credentials.uid), std::strerror(errno));
    }
  }
  CapData caps;  // all zero: no effective, permitted or inheritable capability
  if (syscall(SYS_capset, &caps.header, caps.data) < 0) {
    Die(126, "cannot drop capabilities", std::strerror(errno));
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
    Die(126, "cannot set no_new_privs", std::strerror(errno));
  }
}

std::string EnvValue(const std::vector<std::string>& env, std::string_view key) {
  for (const std::string& entry : env) {
    if (entry.size() > key.size() && entry.compare(0, key.size(), key) == 0 &&
        entry[key.size()] == '=') {
      return entry.substr(key.size() + 1);
    }
  }
  return kDefaultPath;
}

// execve, falling back to /bin/sh for scripts without a #! line (as execvp does).
void TryExec(const std::string& path, char** argv, char** envp) {
  execve(path.c_str(), argv, envp);
  if (errno != ENOEXEC) return;
  std::vector<char*> sh_argv{const_cast<char*>("sh"), const_cast<char*>(path.c_str())};
  for (char** arg = argv + 1; *arg; ++arg) sh_argv.push_back(*arg);
  sh_argv.push_back(nullptr);
  execve("/bin/sh", sh_argv.data(), envp);
  errno = ENOEXEC;
}

}  // namespace

bool HasEffectiveCapability(int cap) {
  CapData caps;
  if (syscall(SYS_capget, &caps.header, caps.data) < 0) return false;
  return (caps.data[cap / 32].effective & (1u << (cap % 32))) != 0;
}

Result<Credentials> ResolveUser(const std::string& user, const std::string& passwd_path,
                                const std::string& group_path) {
  Credentials credentials;
  if (user.empty()) return credentials;
  credentials.change = true;
  std::string user_part = user;
  std::string group_part;
  bool has_group = false;
  if (size_t colon = user.find(':'); colon != std::string::npos) {
    user_part = user.substr(0, colon);
    group_part = user.substr(colon + 1);
    has_group = true;
    if (group_part.empty())
      return Fail(ErrorCode::kInvalidArgument, "user '" + user + "': empty group");
  }
  if (user_part.empty())
    return Fail(ErrorCode::kInvalidArgument, "user '" + user + "': empty user");
  std::optional<PasswdEntry> entry;
  if (auto uid = ParseId(user_part)) {
    credentials.uid = *uid;
    entry = FindPasswd(passwd_path, "", *uid);
  } else {
    entry = FindPasswd(passwd_path, user_part, std::nullopt);
    if (!entry) {
      return Fail(ErrorCode::kNotFound,
                  "unknown user '" + user_part + "' (not in " + passwd_path + ")");
    }
    credentials.uid = entry->uid;
  }
  if (has_group) {
    if (auto gid = ParseId(group_part)) {
      credentials.gid = *gid;
    } else if (auto named = FindGroup(group_path, group_part)) {
      credentials.gid = *named;
    } else {
      return Fail(ErrorCode::kNotFound,
                  "unknown group '" + group_part + "' (not in " + group_path + ")");
    }
    credentials.groups = {credentials.gid};
  } else if (entry) {
    credentials.gid = entry->gid;
    credentials.groups = GroupsOf(group_path, entry->name, entry->gid);
  } else {
    credentials.gid = 0;
    credentials.groups = {0};
  }
  return credentials;
}

void RunChild(const ChildSpec& spec) {
  // Our own process group, so signals and timeouts reach everything the command starts.
  setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int signo = 1; signo < NSIG; ++signo) signal(signo, SIG_DFL);
  if (dup2(spec.stdin_fd, STDIN_FILENO) < 0 || dup2(spec.stdout_fd, STDOUT_FILENO) < 0 ||
      dup2(spec.stderr_fd, STDERR_FILENO) < 0) {
    _exit(126);
  }
  close_range(3, ~0u, 0);
  umask(022);
  DropPrivileges(spec.credentials);
  // Outside a PID namespace (tests, --listen on a shared host) a command must not outlive
  // the agent that would have reaped and reported it. Set after the uid change, which
  // clears it.
  prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (spec.agent_pid != 0 && getppid() != spec.agent_pid) _exit(126);
  if (chdir(spec.cwd.c_str()) < 0) Die(126, "cd " + spec.cwd, std::strerror(errno));

  std::vector<char*> argv;
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& entry : spec.env) envp.push_back(const_cast<char*>(entry.c_str()));
  envp.push_back(nullptr);

  const std::string& command = spec.argv[0];
  if (command.find('/') != std::string::npos) {
    TryExec(command, argv.data(), envp.data());
    int err = errno;
    Die(err == ENOENT ? 127 : 126, command, std::strerror(err));
  }
  // PATH lookup with the command's own PATH. Like a shell: a permission error on one
  // candidate is remembered (126) but later candidates are still tried.
  std::string path_var = EnvValue(spec.env, "PATH");
  int remembered = ENOENT;
  size_t start = 0;
  while (start <= path_var.size()) {
    size_t colon = path_var.find(':', start);
    std::string dir = path_var.substr(start, colon == std::string::npos ? colon : colon - start);
    if (dir.empty()) dir = ".";
    TryExec(dir + "/" + command, argv.data(), envp.data());
    if (errno == EACCES || errno == ENOEXEC || errno == EISDIR) remembered = errno;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  if (remembered == ENOENT) Die(127, command, "command not found");
  Die(126, command, std::strerror(remembered));
}

}  // namespace tartarus::guest
