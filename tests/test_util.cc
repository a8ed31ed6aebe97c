#include "test_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/sha256.h"
#include "common/unique_fd.h"

namespace tartarus::testing {

std::string StateDir() {
  const char* dir = getenv("TARTARUS_TEST_STATE_DIR");
  if (!dir || !*dir) dir = getenv("TARTARUS_STATE_DIR");
  return dir && *dir ? dir : "/var/lib/tartarus";
}

CliResult RunCli(const std::vector<std::string>& args, const std::string& stdin_data,
                 std::chrono::seconds timeout) {
  CliResult result;
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) return result;
  UniqueFd in_r(in[0]), in_w(in[1]), out_r(out[0]), out_w(out[1]), err_r(err[0]), err_w(err[1]);
  SpawnOptions options;
  options.argv = {TARTARUS_BIN, "--state-dir", StateDir()};
  options.argv.insert(options.argv.end(), args.begin(), args.end());
  options.fds = {{0, in_r.Get()}, {1, out_w.Get()}, {2, err_w.Get()}};
  auto child = Spawn(options);
  if (!child) {
    result.err = child.error().message;
    return result;
  }
  in_r.Reset();
  out_w.Reset();
  err_w.Reset();
  std::thread writer([fd = in_w.Release(), &stdin_data] {
    size_t off = 0;
    while (off < stdin_data.size()) {
      ssize_t n = write(fd, stdin_data.data() + off, stdin_data.size() - off);
      if (n <= 0) break;
      off += n;
    }
    close(fd);
  });
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool out_open = true, err_open = true;
  std::string buffer(1 << 16, '\0');
  while ((out_open || err_open) && std::chrono::steady_clock::now() < deadline) {
    pollfd fds[2] = {{out_open ? out_r.Get() : -1, POLLIN, 0},
                     {err_open ? err_r.Get() : -1, POLLIN, 0}};
    if (poll(fds, 2, 200) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (!fds[i].revents) continue;
      ssize_t n = read(fds[i].fd, buffer.data(), buffer.size());
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
      } else {
        (i == 0 ? result.out : result.err).append(buffer.data(), n);
      }
    }
  }
  bool timed_out = false;
  auto status = child->WaitFor(std::chrono::seconds(out_open || err_open ? 0 : 60), &timed_out);
  writer.join();
  if (status) result.exit_code = status->ShellCode();
  if (timed_out) result.err += "\n[test: tartarus did not finish in time]";
  return result;
}

std::string Sha256Hex(const std::string& data) {
  Sha256 hash;
  hash.Update(data);
  return hash.FinishHex();
}

std::string SkipReason(const std::string& runtime, const std::string& template_name) {
  if (geteuid() != 0) return "skipped: sandboxes need root";
  std::string binary = runtime == "gvisor"           ? "runsc"
                       : runtime == "container-crun" ? "crun"
                                                     : "runc";
  if (FindExecutable(binary).empty()) return "skipped: " + binary + " is not installed";
  (void)template_name;
  return "";
}

std::vector<std::string> Leftovers(const std::string& state_dir, const std::string& id) {
  std::vector<std::string> found;
  if (id.empty()) return {"empty sandbox id"};
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    if (line.find(id) != std::string::npos) found.push_back("mount: " + line);
  }
  const char* cgroup_roots[] = {"cpu",   "cpuacct", "cpuset",  "memory",  "devices", "freezer",
                                "blkio", "pids",    "systemd", "unified", ""};
  for (const char* root : cgroup_roots) {
    std::string path =
        std::string("/sys/fs/cgroup/") + root + (*root ? "/" : "") + "tartarus/" + id;
    if (access(path.c_str(), F_OK) == 0) found.push_back("cgroup: " + path);
  }
  DIR* proc = opendir("/proc");
  while (dirent* e = proc ? readdir(proc) : nullptr) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream cmdline(std::string("/proc/") + e->d_name + "/cmdline");
    std::stringstream ss;
    ss << cmdline.rdbuf();
    std::string text = ss.str();
    for (auto& c : text) {
      if (c == '\0') c = ' ';
    }
    if (text.find(id) != std::string::npos) {
      found.push_back("process " + std::string(e->d_name) + ": " + text);
    }
  }
  if (proc) closedir(proc);
  for (std::string dir : {state_dir + "/runtime/sandboxes/" + id, state_dir + "/runtime/runc/" + id,
                          state_dir + "/runtime/runsc/" + id}) {
    if (access(dir.c_str(), F_OK) == 0) found.push_back("state: " + dir);
  }
  return found;
}

}  // namespace tartarus::testing
