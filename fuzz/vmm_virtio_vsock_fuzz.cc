// libFuzzer target for tartarus-vmm's virtio-vsock packet parsing (src/vmm/virtio/vsock.h):
// the tx queue the fuzzer lays out is processed (headers, lengths, CIDs, types, ops, REQUESTs to
// host ports nobody listens on), then the same chains as rx buffers receive the answers. The
// device must end, keep its queues and buffers within their caps, and never crash.
#include <unistd.h>

#include <string>

#include "vmm/virtio/vsock.h"
#include "vmm_fuzz_util.h"

using namespace tartarus::vmm::virtio;

namespace {

VsockDevice& Device() {
  static std::unique_ptr<VsockDevice> device = [] {
    const std::string path = "/tmp/tartarus-vsock-fuzz-" + std::to_string(::getpid()) + ".sock";
    ::unlink(path.c_str());
    return std::move(VsockDevice::Create(VsockConfig{.guest_cid = 3, .uds_path = path}).value());
  }();
  return *device;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tartarus::vmm::GuestMemory& memory = fuzz::FuzzMemory();
  VsockDevice& device = Device();
  Virtqueue tx = fuzz::QueueFromInput(data, size);
  Virtqueue rx(tx.state());
  const uint16_t tx_before = tx.state().next_used;
  (void)device.ProcessQueue(VsockDevice::kTxQueue, tx, memory);
  VMM_FUZZ_CHECK(static_cast<uint16_t>(tx.state().next_used - tx_before) <= tx.state().size);
  VMM_FUZZ_CHECK(device.QueuedResetCount() <= VsockDevice::kMaxQueuedResets);
  VMM_FUZZ_CHECK(device.ConnectionCount() <= VsockDevice::kMaxConnections);
  VMM_FUZZ_CHECK(device.BufferedBytes() <= device.ConnectionCount() * VsockDevice::kConnBufferSize);
  (void)device.PollEvents(0);
  const uint16_t rx_before = rx.state().next_used;
  (void)device.ProcessQueue(VsockDevice::kRxQueue, rx, memory);
  VMM_FUZZ_CHECK(static_cast<uint16_t>(rx.state().next_used - rx_before) <= rx.state().size);
  device.Reset();  // each input starts from no connections
  VMM_FUZZ_CHECK(device.ConnectionCount() == 0 && device.QueuedResetCount() == 0);
  return 0;
}
