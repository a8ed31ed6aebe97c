// The template builder: turns a TemplateSpec into a root filesystem tree. The Debian
// builder debootstraps each suite once into a shared cache, copies it, then installs
// packages, writes files and runs setup commands in a chroot. Every chroot step runs in
// its own private mount and PID namespace, so /proc, /sys and /dev mounts (and any
// process a setup command leaves behind) die with the step, even on kill -9.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "template/template_spec.h"

namespace tartarus::templates {

// Receives one human-readable line at a time (no trailing newline).
using ProgressCallback = std::function<void(std::string_view line)>;

// The Debian mirror: $TARTARUS_DEBIAN_MIRROR, else the first non-security URI in
// /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list, else deb.debian.org.
std::string DefaultDebianMirror();

// Builds a tree for a spec. The store owns where trees live; builders only fill one.
class RootfsBuilder {
 public:
  virtual ~RootfsBuilder() = default;
  // Fills `rootfs_dir` (an existing, empty directory) with the tree of `spec`.
  virtual Status BuildRootfs(const TemplateSpec& spec, const std::string& rootfs_dir,
                             const ProgressCallback& progress) = 0;
};

struct DebootstrapOptions {
  std::string mirror;    // empty: DefaultDebianMirror()
  bool verbose = false;  // forward child output lines to the progress callback
  std::chrono::seconds step_timeout{30 * 60};
  size_t error_tail_lines = 20;  // lines of a failed command's output in the error
};

class DebootstrapBuilder : public RootfsBuilder {
 public:
  // The suite cache lives in <state_dir>/cache/debootstrap/<suite>/rootfs.
  DebootstrapBuilder(std::string state_dir, DebootstrapOptions options = {});

  Status BuildRootfs(const TemplateSpec& spec, const std::string& rootfs_dir,
                     const ProgressCallback& progress) override;

  // Makes sure the suite's debootstrap tree is cached; returns its path. `*cached` says
  // whether it already was.
  Result<std::string> EnsureSuiteCache(std::string_view suite, const ProgressCallback& progress,
                                       bool* cached = nullptr);

  // Fails with an actionable message when this host cannot build templates (not root,
  // debootstrap, chroot or unshare missing).
  static Status CheckHost();

  const std::string& mirror() const { return options_.mirror; }

 private:
  std::string state_dir_;
  DebootstrapOptions options_;
};

}  // namespace tartarus::templates
