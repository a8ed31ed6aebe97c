// tartarus-agent: the guest agent, PID 1 inside every Tartarus sandbox (part of the
// Tartarus runtime). A static binary: only the standard library, tartarus_common and the
// protocol codec.
//
//   tartarus-agent --stdio         serve the guest protocol on fd 0 (in) / fd 1 (out)
//   tartarus-agent --fds IN,OUT    serve it on two inherited fds (`runc run --preserve-fds`)
//   --seccomp (before the mode)    first install the sandbox's seccomp filter on itself, so
//                                  that every command inherits it (common/seccomp_filter.h)
//   tartarus-agent --listen PATH   serve it on a Unix socket, one connection at a time
//   tartarus-agent --vsock PORT    serve it on AF_VSOCK (any CID, PORT), one connection at a time
//   tartarus-agent --init          PID 1 of a microVM's initramfs: mount the sandbox root from
//                                  the kernel command line's tartarus.* keys (guest/init.h),
//                                  then serve on vsock; reboots the VM when done. Also chosen
//                                  when started as PID 1 without arguments.
//
// Diagnostics go to stderr.
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "common/seccomp_filter.h"
#include "guest/agent.h"
#include "guest/child.h"
#include "guest/init.h"

#ifndef TARTARUS_VERSION
#define TARTARUS_VERSION "dev"
#endif

namespace tartarus::guest {
namespace {

void Log(const std::string& message) {
  std::fprintf(stderr, "tartarus-agent: %s\n", message.c_str());
}

// In a microVM the agent boots on a bare kernel and mounts the basics itself; in a
// container the OCI runtime already did, and the agent lacks CAP_SYS_ADMIN anyway.
void MountBasics() {
  if (!HasEffectiveCapability(CAP_SYS_ADMIN)) return;
  if (access("/proc/self", F_OK) == 0) return;
  struct Mount {
    const char* source;
    const char* target;
    const char* type;
    unsigned long flags;
    const char* data;
  };
  const Mount mounts[] = {
      {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr},
      {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"},
      {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"},
      {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"},
  };
  for (const Mount& m : mounts) {
    mkdir(m.target, 0755);
    if (mount(m.source, m.target, m.type, m.flags, m.data) < 0 && errno != EBUSY) {
      Log(std::string("mount ") + m.target + ": " + std::strerror(errno));
    }
  }
}

// fds 0-2 must exist so that pipes and files never land on them.
void EnsureStdFds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) < 0) {
      int null_fd = open("/dev/null", O_RDWR);
      if (null_fd >= 0 && null_fd != fd) {
        dup2(null_fd, fd);
        close(null_fd);
      }
    }
  }
}

int ExitCodeFor(Agent::End end) {
  switch (end) {
    case Agent::End::kHostClosed:
    case Agent::End::kShutdown:
      return 0;
    case Agent::End::kVersionMismatch:
    case Agent::End::kFatal:
      return 1;
  }
  return 1;
}

int ServeStdio() {
  Agent agent(TARTARUS_VERSION);
  return ExitCodeFor(agent.Serve(STDIN_FILENO, STDOUT_FILENO));
}

// "3,4" -> {3, 4}: two distinct fds above stdio, both open.
bool ParseFdPair(std::string_view text, int& in, int& out) {
  size_t comma = text.find(',');
  if (comma == std::string_view::npos) return false;
  auto parse = [](std::string_view digits, int& fd) {
    if (digits.empty() || digits.size() > 4) return false;
    fd = 0;
    for (char c : digits) {
      if (c < '0' || c > '9') return false;
      fd = fd * 10 + (c - '0');
    }
    return fd > 2;
  };
  return parse(text.substr(0, comma), in) && parse(text.substr(comma + 1), out) && in != out &&
         fcntl(in, F_GETFD) >= 0 && fcntl(out, F_GETFD) >= 0;
}

// The OCI runtime hands these over without close-on-exec; the sandbox's commands must not
// inherit the host's end of the protocol.
int ServeFds(int in, int out) {
  fcntl(in, F_SETFD, FD_CLOEXEC);
  fcntl(out, F_SETFD, FD_CLOEXEC);
  Agent agent(TARTARUS_VERSION);
  return ExitCodeFor(agent.Serve(in, out));
}

// Serves one connection at a time until the host asks for shutdown.
int ServeListener(int listener) {
  for (;;) {
    UniqueFd conn(accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      Log(std::string("accept: ") + std::strerror(errno));
      return 1;
    }
    // Each connection starts clean: Serve kills what the previous one started.
    Agent agent(TARTARUS_VERSION);
    Agent::End end = agent.Serve(conn.Get(), conn.Get());
    if (end == Agent::End::kShutdown) return 0;
  }
}

int ServeSocket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    Log("socket path too long: " + path);
    return 2;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  UniqueFd listener(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) {
    Log(std::string("socket: ") + std::strerror(errno));
    return 1;
  }
  unlink(path.c_str());
  if (bind(listener.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
      listen(listener.Get(), 4) < 0) {
    Log("listen on " + path + ": " + std::strerror(errno));
    return 1;
  }
  return ServeListener(listener.Get());
}

int ServeVsock(uint32_t port) {
  UniqueFd listener(socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!listener) {
    Log(std::string("vsock socket: ") + std::strerror(errno));
    return 1;
  }
  sockaddr_vm addr{};
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = VMADDR_CID_ANY;
  addr.svm_port = port;
  if (bind(listener.Get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
      listen(listener.Get(), 4) < 0) {
    Log("listen on vsock port " + std::to_string(port) + ": " + std::strerror(errno));
    return 1;
  }
  return ServeListener(listener.Get());
}

// A terminal (a hypervisor's console port) as the byte stream: raw, so every byte of the
// protocol passes unchanged (no echo, no line editing, no CR/LF mapping, no flow control).
int ServeTty(const std::string& path) {
  UniqueFd tty(open(path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!tty) {
    Log("open " + path + ": " + std::strerror(errno));
    return 1;
  }
  termios mode{};
  if (tcgetattr(tty.Get(), &mode) < 0) {
    Log("tcgetattr " + path + ": " + std::strerror(errno));
    return 1;
  }
  cfmakeraw(&mode);
  mode.c_cflag |= CLOCAL | CREAD;
  mode.c_cflag &= ~CRTSCTS;
  mode.c_iflag &= ~(IXON | IXOFF | IXANY);
  mode.c_cc[VMIN] = 1;
  mode.c_cc[VTIME] = 0;
  if (tcsetattr(tty.Get(), TCSANOW, &mode) < 0) {
    Log("tcsetattr " + path + ": " + std::strerror(errno));
    return 1;
  }
  Log("serving on " + path);
  Agent agent(TARTARUS_VERSION);
  return ExitCodeFor(agent.Serve(tty.Get(), tty.Get()));
}

// PID 1 must not exit (the kernel panics); a reboot ends the VM, and tartarus-vmm reports
// the guest's i8042 reset (reboot=k) as a clean stop.
[[noreturn]] void EndVm() {
  sync();
  reboot(RB_AUTOBOOT);
  for (;;) pause();
}

int RunAsInit() {
  auto options = RunInit();
  if (!options) {
    Log("boot failed: " + options.error().message);
    EndVm();
  }
  const bool on_tty = !options->agent_tty.empty();
  int code = on_tty ? ServeTty(options->agent_tty) : ServeVsock(options->vsock_port);
  if (code != 0)
    Log((on_tty ? "terminal" : "vsock") + std::string(" serving ended with ") +
        std::to_string(code));
  EndVm();
}

int Main(int argc, char** argv) {
  bool seccomp = argc >= 2 && std::string_view(argv[1]) == "--seccomp";
  if (seccomp) {
    --argc;
    ++argv;
  }
  // The kernel starts an initramfs's /init with what follows `--` on its command line, after
  // any words it did not know: as PID 1, `--init` anywhere (or nothing at all) means init.
  bool init_args = argc == 1;
  for (int i = 1; i < argc; ++i) init_args = init_args || std::string_view(argv[i]) == "--init";
  std::string_view mode = getpid() == 1 && init_args ? "--init" : argc >= 2 ? argv[1] : "";
  int fd_in = -1, fd_out = -1;
  uint32_t vsock_port = 0;
  bool usage_ok = (mode == "--stdio" && argc == 2) || (mode == "--listen" && argc == 3) ||
                  (mode == "--fds" && argc == 3 && ParseFdPair(argv[2], fd_in, fd_out)) ||
                  (mode == "--vsock" && argc == 3 && ParseVsockPort(argv[2]).has_value()) ||
                  (mode == "--init" && !seccomp && getpid() == 1);
  if (!usage_ok) {
    std::fprintf(stderr,
                 "usage: tartarus-agent [--seccomp] --stdio | --fds IN,OUT | --listen PATH | "
                 "--vsock PORT\n"
                 "       tartarus-agent --init   (as PID 1 of a microVM only)\n");
    return 2;
  }
  if (mode == "--vsock") vsock_port = *ParseVsockPort(argv[2]);
  EnsureStdFds();
  // SIGCHLD arrives through a signalfd; a host that vanishes shows up as EPIPE.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Outside PID 1 (tests, some runtimes) orphans would escape to the real init: adopt them.
  if (getpid() != 1) prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  // Modes in FileWriteOpen and Mkdir are applied exactly.
  umask(0);
  // Before MountBasics: init mounts /proc, /sys and /dev into the sandbox root itself.
  if (mode == "--init") return RunAsInit();
  MountBasics();
  // Fail closed: a sandbox without its filter must not run anything.
  if (seccomp) {
    if (auto installed = InstallSandboxSeccompFilter(); !installed) {
      Log(installed.error().message);
      return 1;
    }
  }
  if (mode == "--stdio") return ServeStdio();
  if (mode == "--fds") return ServeFds(fd_in, fd_out);
  if (mode == "--vsock") return ServeVsock(vsock_port);
  return ServeSocket(argv[2]);
}

}  // namespace
}  // namespace tartarus::guest

int main(int argc, char** argv) { return tartarus::guest::Main(argc, argv); }
