// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-vsock (virtio 1.1, section 5.10) with
// Firecracker's hybrid vsock backend: guest AF_VSOCK stream sockets meet host AF_UNIX sockets.
// Host-initiated: a host program connects to uds_path and writes "CONNECT <port>\n"; once the
// guest accepts, it reads "OK <host_port>\n" and the socket carries the stream. Guest-initiated:
// a REQUEST to host port P is connected (by the event thread) to the Unix socket "<uds_path>_P",
// or answered with RST.
//
// Locking. The transport's mutex is held around ProcessQueue/Reset (vCPU threads, and the
// event thread through notify_rx); the device's own mutex_ guards the connection table and is
// always taken after the transport's. The event thread takes only mutex_ while handling host
// sockets and calls notify_rx with no lock held, so the order never inverts. Every host socket is
// non-blocking: a vCPU thread processing the tx queue writes what the host accepts and buffers
// the rest (bounded), and never waits for the host.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/unique_fd.h"
#include "vmm/virtio/device.h"

namespace tartarus::vmm::virtio {

inline constexpr uint64_t kVsockHostCid = 2;
inline constexpr uint16_t kVsockTypeStream = 1;

// Packet operations (5.10.6).
inline constexpr uint16_t kVsockOpRequest = 1;
inline constexpr uint16_t kVsockOpResponse = 2;
inline constexpr uint16_t kVsockOpRst = 3;
inline constexpr uint16_t kVsockOpShutdown = 4;
inline constexpr uint16_t kVsockOpRw = 5;
inline constexpr uint16_t kVsockOpCreditUpdate = 6;
inline constexpr uint16_t kVsockOpCreditRequest = 7;

// SHUTDOWN flags: the sender will receive / send no more.
inline constexpr uint32_t kVsockShutdownRcv = 1;
inline constexpr uint32_t kVsockShutdownSend = 2;

// struct virtio_vsock_hdr, little-endian like x86.
struct __attribute__((packed)) VsockHeader {
  uint64_t src_cid = 0;
  uint64_t dst_cid = 0;
  uint32_t src_port = 0;
  uint32_t dst_port = 0;
  uint32_t len = 0;
  uint16_t type = 0;
  uint16_t op = 0;
  uint32_t flags = 0;
  uint32_t buf_alloc = 0;
  uint32_t fwd_cnt = 0;
};
static_assert(sizeof(VsockHeader) == 44);

struct VsockConfig {
  uint64_t guest_cid = 3;  // 3 or more, below 2^32 - 1 (VMADDR_CID_ANY)
  std::string uds_path;    // created by the device; must not exist yet
};

// Counters for logs and tests.
struct VsockStats {
  uint64_t dropped_packets = 0;  // malformed or misaddressed tx packets
  uint64_t resets_sent = 0;
  uint64_t resets_not_queued = 0;  // orphan RSTs dropped because the queue was full
  uint64_t flood_resets = 0;       // connections reset for overrunning their buffer
};

class VsockDevice : public VirtioDevice {
 public:
  static constexpr size_t kRxQueue = 0;
  static constexpr size_t kTxQueue = 1;
  static constexpr size_t kEventQueue = 2;
  // Per connection: what we advertise as buf_alloc and the most guest data we hold for a slow
  // host reader. A guest that sends past it ignored our credit and gets its connection reset.
  static constexpr uint32_t kConnBufferSize = 256 * 1024;
  static constexpr size_t kMaxConnections = 1023;           // Firecracker's limit
  static constexpr uint32_t kMaxPacketPayload = 64 * 1024;  // Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE
  static constexpr size_t kMaxQueuedResets = 256;           // RSTs for unknown connections
  static constexpr size_t kMaxConnectLine = 32;             // "CONNECT <port>\n", as Firecracker
  static constexpr uint32_t kFirstHostPort = 1u << 30;      // host-initiated ports: [2^30, 2^31)
  static constexpr std::chrono::milliseconds kRequestTimeout{2000};
  static constexpr std::chrono::milliseconds kShutdownTimeout{2000};

  // Validates the config and binds and listens on uds_path (non-blocking).
  static Result<std::unique_ptr<VsockDevice>> Create(VsockConfig config);
  // Stops the event thread, closes every socket and removes uds_path.
  ~VsockDevice() override;

  std::string_view Name() const override { return "virtio-vsock"; }
  uint32_t DeviceId() const override { return kDeviceIdVsock; }
  uint64_t Features() const override { return kCommonFeatures; }
  size_t QueueCount() const override { return 3; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) override;
  Result<bool> ProcessQueue(size_t index, Virtqueue& queue, GuestMemory& memory) override;
  // Drops every connection (their host sockets are closed); the listener stays.
  void Reset() override;

  // After a snapshot restore (as Firecracker): the connection table was not saved, so the
  // guest is told with VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue, sent with the
  // next event-queue processing that finds a buffer (call NotifyFromHost(kEventQueue)).
  void RequestTransportReset();
  static constexpr uint32_t kEventTransportReset = 0;  // VIRTIO_VSOCK_EVENT_TRANSPORT_RESET

  // Starts the event thread. notify_rx is called (without device locks) when the guest has
  // packets to read: it should be MmioTransport::NotifyFromHost(kRxQueue).
  Status Start(std::function<void()> notify_rx);
  // Stops and joins the event thread. Must run before the transport holding this device is
  // destroyed: the thread calls into it.
  void Stop();

  // One round of the event loop: waits up to timeout_ms (-1: until an event or a connection
  // timer) for host-side events and handles them. Returns whether the guest has packets
  // waiting. The event thread calls it in a loop; tests and fuzzers may call it directly.
  Result<bool> PollEvents(int timeout_ms);

  size_t ConnectionCount() const;
  size_t QueuedResetCount() const;
  size_t BufferedBytes() const;  // guest data held for host sockets, over all connections
  VsockStats stats() const;
  const std::string& uds_path() const { return config_.uds_path; }

 private:
  enum class State { kLocalInit, kPeerInit, kEstablished, kPeerClosed, kLocalClosed, kKilled };
  struct Connection;
  struct PendingStream {
    UniqueFd fd;
    std::string line;
  };

  explicit VsockDevice(VsockConfig config);

  Result<bool> ProcessRxLocked(Virtqueue& queue, GuestMemory& memory);
  Result<bool> ProcessTxLocked(Virtqueue& queue, GuestMemory& memory);
  void HandleTxPacketLocked(GuestMemory& memory, const DescriptorChain& chain);
  void ConnectionTxLocked(Connection& conn, const VsockHeader& header, GuestMemory& memory,
                          const DescriptorChain& chain);
  void HandleGuestRequestLocked(const VsockHeader& header);
  // Event thread: connects the guest REQUESTs queued by the tx path (RST if nobody listens).
  void ConnectGuestRequestsLocked();
  // Fills header (and payload for RW) with the next packet for the guest; false: none.
  Result<bool> NextRxPacketLocked(GuestMemory& memory, const DescriptorChain& chain,
                                  VsockHeader& header);
  bool ConnectionRxLocked(Connection& conn, GuestMemory& memory, const DescriptorChain& chain,
                          VsockHeader& header);
  bool HasPendingRxLocked() const;

  void AcceptLocked();
  void PendingStreamReadableLocked(int fd);
  void ConnectionEventLocked(Connection& conn, uint32_t events);
  void SendToHostLocked(Connection& conn, GuestMemory& memory, const DescriptorChain& chain,
                        uint32_t len);
  void FlushLocked(Connection& conn);
  void KillLocked(Connection& conn);
  void QueueRxLocked(Connection& conn);
  void QueueResetLocked(uint32_t local_port, uint32_t peer_port);
  void UpdateInterestLocked(Connection& conn);
  void RemoveConnectionLocked(uint64_t key);
  void SweepExpiredLocked();
  void KickRx();
  uint32_t AllocateHostPortLocked();

  VsockConfig config_;
  UniqueFd listener_;
  UniqueFd epoll_;
  UniqueFd kick_;  // eventfd: the tx path has packets for the guest (the event thread relays)
  UniqueFd stop_;  // eventfd: Stop() wakes the event thread
  bool transport_reset_pending_ = false;  // under mutex_

  mutable std::mutex mutex_;
  std::map<uint64_t, std::unique_ptr<Connection>> connections_;  // by (local_port, peer_port)
  std::unordered_map<int, uint64_t> connection_by_fd_;
  std::unordered_map<int, PendingStream> pending_streams_;   // accepted, no CONNECT line yet
  std::deque<uint64_t> rx_order_;                            // connections with packets to send
  std::deque<std::pair<uint32_t, uint32_t>> queued_resets_;  // (local, peer) ports
  std::deque<uint64_t> guest_connects_;                      // connections waiting for connect
  std::set<uint32_t> host_ports_;
  uint32_t last_host_port_ = kFirstHostPort - 1;
  VsockStats stats_;

  std::function<void()> notify_rx_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace tartarus::vmm::virtio
