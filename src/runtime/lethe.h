// Lethe: ephemeral copy-on-write filesystems. Every sandbox gets a fresh root: an overlay
// whose lower layer is the template's root filesystem (shared, never written) and whose
// upper layer lives on a per-sandbox tmpfs sized to the disk limit, so a sandbox that
// fills its disk gets ENOSPC and nothing it wrote survives Destroy().
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace tartarus::runtime {

class Lethe {
 public:
  // Mounts a tmpfs of `size_bytes` at `layer_dir` (created; holds upper/ and work/), and an
  // overlay of `lower_dir` + upper at `root_dir` (created, after the tmpfs: it may be a
  // dir inside `layer_dir`). Undoes everything on failure.
  static Result<Lethe> Create(const std::string& lower_dir, const std::string& layer_dir,
                              const std::string& root_dir, uint64_t size_bytes);

  Lethe() = default;
  Lethe(Lethe&& other) noexcept;
  Lethe& operator=(Lethe&& other) noexcept;
  Lethe(const Lethe&) = delete;
  Lethe& operator=(const Lethe&) = delete;
  ~Lethe();

  const std::string& root_dir() const { return root_dir_; }

  // Unmounts the overlay and the tmpfs and removes both mount points. Idempotent.
  Status Destroy();
  // Detaches the overlay and the tmpfs (MNT_DETACH) without waiting for their users; only
  // for the moment every process of the sandbox is gone, when what may still hold the
  // tmpfs is the OCI runtime's working directory (the bundle), which it drops when it
  // exits. One detach of the tmpfs takes the overlay on it along, and costs one RCU grace
  // period instead of two; it overlaps with the runtime's own cleanup. Then removes the
  // mount points. False when something failed: Destroy() then finishes the job.
  bool DetachNow();

  // The same for dirs left by a dead process: each step is skipped when already done.
  static Status Teardown(const std::string& layer_dir, const std::string& root_dir);

 private:
  std::string layer_dir_;
  std::string root_dir_;
};

// Unmounts `path` if something is mounted there (a plain unmount, then a lazy detach as
// the last resort when it stays busy). Ok when nothing is mounted.
Status UnmountIfMounted(const std::string& path);

}  // namespace tartarus::runtime
