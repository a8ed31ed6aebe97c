// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-rng (virtio 1.1, section 5.4).
#include "vmm/virtio/rng.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>

namespace tartarus::vmm::virtio {

Status FillFromGetrandom(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t got = ::getrandom(out.data() + done, out.size() - done, 0);
    if (got < 0) {
      // vCPU threads get kick signals: large requests may be interrupted part way.
      if (errno == EINTR) continue;
      return FailErrno("getrandom");
    }
    done += static_cast<size_t>(got);
  }
  return Ok();
}

RngDevice::RngDevice(Source source)
    : source_(source ? std::move(source) : Source(FillFromGetrandom)) {}

void RngDevice::ReadConfig(uint64_t /*offset*/, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);  // no config space
}

Result<bool> RngDevice::ProcessQueue(size_t /*index*/, Virtqueue& queue, GuestMemory& memory) {
  bool used = false;
  for (uint32_t served = 0; served < queue.state().size; ++served) {
    std::optional<DescriptorChain> chain = TRY(queue.Pop(memory));
    if (!chain) break;
    if (!chain->readable.empty()) {
      return Fail(ErrorCode::kInvalidArgument, "entropy request has device-readable buffers");
    }
    BufferCursor out(memory, chain->writable);
    const uint64_t length = std::min(out.Remaining(), kMaxBytesPerRequest);
    TRY(out.ForEach(length, [&](std::span<uint8_t> bytes) { return source_(bytes); }));
    TRY(queue.PushUsed(memory, chain->head, static_cast<uint32_t>(length)));
    used = true;
  }
  return used;
}

}  // namespace tartarus::vmm::virtio
