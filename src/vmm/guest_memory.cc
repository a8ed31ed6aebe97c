// tartarus-vmm (Tartarus's KVM microVM monitor): guest physical memory.
#include "vmm/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <utility>

namespace tartarus::vmm {
namespace {

std::string Hex(uint64_t value) {
  char text[24];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

std::string Range(uint64_t addr, uint64_t length) {
  return "guest range [" + Hex(addr) + ", +" + Hex(length) + ")";
}

}  // namespace

Result<GuestMemory> GuestMemory::Create(const std::vector<RegionSpec>& specs) {
  if (specs.empty()) return Fail(ErrorCode::kInvalidArgument, "guest memory: no regions");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<RegionSpec> sorted = specs;
  std::sort(sorted.begin(), sorted.end(),
            [](const RegionSpec& a, const RegionSpec& b) { return a.guest_addr < b.guest_addr; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const RegionSpec& spec = sorted[i];
    if (spec.size == 0 || spec.size % page != 0 || spec.guest_addr % page != 0) {
      return Fail(ErrorCode::kInvalidArgument, "guest memory: region at " + Hex(spec.guest_addr) +
                                                   " of size " + Hex(spec.size) +
                                                   " is empty or not page-aligned");
    }
    if (spec.guest_addr + spec.size < spec.guest_addr) {
      return Fail(ErrorCode::kInvalidArgument,
                  "guest memory: region at " + Hex(spec.guest_addr) + " wraps around");
    }
    if (i > 0 && sorted[i - 1].guest_addr + sorted[i - 1].size > spec.guest_addr) {
      return Fail(ErrorCode::kInvalidArgument, "guest memory: region at " + Hex(spec.guest_addr) +
                                                   " overlaps the one at " +
                                                   Hex(sorted[i - 1].guest_addr));
    }
  }
  GuestMemory memory;
  for (const RegionSpec& spec : sorted) {
    void* host;
    if (spec.backing.fd < 0) {
      host = ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    } else {
      host = ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_PRIVATE, spec.backing.fd,
                    static_cast<off_t>(spec.backing.offset));
    }
    if (host == MAP_FAILED) return FailErrno("mmap guest region at " + Hex(spec.guest_addr));
    memory.regions_.push_back({spec.guest_addr, spec.size, static_cast<uint8_t*>(host)});
  }
  return memory;
}

Result<GuestMemory> GuestMemory::CreateAnonymous(uint64_t size) {
  return Create({RegionSpec{.guest_addr = 0, .size = size}});
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : regions_(std::exchange(other.regions_, {})) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this != &other) {
    UnmapAll();
    regions_ = std::exchange(other.regions_, {});
  }
  return *this;
}

GuestMemory::~GuestMemory() { UnmapAll(); }

void GuestMemory::UnmapAll() {
  for (const GuestRegion& region : regions_) ::munmap(region.host, region.size);
  regions_.clear();
}

uint64_t GuestMemory::TotalSize() const {
  uint64_t total = 0;
  for (const GuestRegion& region : regions_) total += region.size;
  return total;
}

Result<const GuestRegion*> GuestMemory::Find(uint64_t addr, uint64_t length) const {
  if (addr + length < addr) {
    return Fail(ErrorCode::kInvalidArgument, Range(addr, length) + " overflows");
  }
  for (const GuestRegion& region : regions_) {
    // Written so that no sum can overflow: addr >= start and length fits in what remains.
    if (addr >= region.guest_addr && addr - region.guest_addr <= region.size &&
        length <= region.size - (addr - region.guest_addr)) {
      return &region;
    }
  }
  return Fail(ErrorCode::kInvalidArgument, Range(addr, length) + " is outside guest memory");
}

Result<std::span<uint8_t>> GuestMemory::Slice(uint64_t addr, uint64_t length) {
  const GuestRegion* region = TRY(Find(addr, length));
  return std::span<uint8_t>(region->host + (addr - region->guest_addr), length);
}

Status GuestMemory::Read(uint64_t addr, std::span<uint8_t> out) const {
  const GuestRegion* region = TRY(Find(addr, out.size()));
  if (!out.empty()) std::memcpy(out.data(), region->host + (addr - region->guest_addr), out.size());
  return Ok();
}

Status GuestMemory::Write(uint64_t addr, std::span<const uint8_t> data) {
  const GuestRegion* region = TRY(Find(addr, data.size()));
  if (!data.empty()) {
    std::memcpy(region->host + (addr - region->guest_addr), data.data(), data.size());
  }
  return Ok();
}

Status GuestMemory::Fill(uint64_t addr, uint64_t length, uint8_t value) {
  std::span<uint8_t> bytes = TRY(Slice(addr, length));
  std::fill(bytes.begin(), bytes.end(), value);
  return Ok();
}

}  // namespace tartarus::vmm
