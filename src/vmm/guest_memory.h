// tartarus-vmm (Tartarus's KVM microVM monitor): guest physical memory.
// Regions of host memory that back guest physical ranges, with bounds-checked access: every
// guest physical address is outside input and a bad one yields an Error, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/result.h"

namespace tartarus::vmm {

// Where a region's bytes come from. Anonymous today; a snapshot's memory file (mapped
// MAP_PRIVATE so pages load lazily and clones share them copy-on-write) comes later.
struct RegionBacking {
  int fd = -1;          // -1: anonymous zeroed memory
  uint64_t offset = 0;  // offset in fd
};

struct RegionSpec {
  uint64_t guest_addr = 0;
  uint64_t size = 0;  // a multiple of the page size
  RegionBacking backing;
};

struct GuestRegion {
  uint64_t guest_addr;
  uint64_t size;
  uint8_t* host;
  uint64_t End() const { return guest_addr + size; }
};

class GuestMemory {
 public:
  // Maps every region; fails on empty, unaligned, wrapping or overlapping specs.
  static Result<GuestMemory> Create(const std::vector<RegionSpec>& specs);
  // One anonymous region at guest address 0.
  static Result<GuestMemory> CreateAnonymous(uint64_t size);

  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  const std::vector<GuestRegion>& regions() const { return regions_; }
  uint64_t TotalSize() const;

  // Host bytes for [addr, addr + length): must lie inside one region.
  Result<std::span<uint8_t>> Slice(uint64_t addr, uint64_t length);
  Status Read(uint64_t addr, std::span<uint8_t> out) const;
  Status Write(uint64_t addr, std::span<const uint8_t> data);
  Status Fill(uint64_t addr, uint64_t length, uint8_t value);

  template <class T>
  Result<T> ReadObject(uint64_t addr) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    TRY(Read(addr, std::span<uint8_t>(reinterpret_cast<uint8_t*>(&value), sizeof(T))));
    return value;
  }
  template <class T>
  Status WriteObject(uint64_t addr, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return Write(addr,
                 std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
  }

 private:
  GuestMemory() = default;
  Result<const GuestRegion*> Find(uint64_t addr, uint64_t length) const;
  void UnmapAll();
  std::vector<GuestRegion> regions_;
};

}  // namespace tartarus::vmm
