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
  // overlay of `lower_dir` + upper at `root_dir` (created). Undoes everything on failure.
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
