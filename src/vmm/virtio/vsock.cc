// tartarus-vmm (Tartarus's KVM microVM monitor): virtio-vsock with Firecracker's hybrid vsock
// backend (virtio 1.1, 5.10; Firecracker docs/vsock.md).
#include "vmm/virtio/vsock.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/unix_address.h"

namespace tartarus::vmm::virtio {
namespace {

using Clock = std::chrono::steady_clock;

// Pending packets of one connection, in the order they are sent.
constexpr uint32_t kPendRst = 1;
constexpr uint32_t kPendResponse = 2;
constexpr uint32_t kPendRequest = 4;
constexpr uint32_t kPendRw = 8;
constexpr uint32_t kPendCreditUpdate = 16;

// epoll tags for the device's own descriptors; connection and stream tags are their fds.
constexpr uint64_t kTagListener = 1ULL << 32;
constexpr uint64_t kTagKick = 2ULL << 32;
constexpr uint64_t kTagStop = 3ULL << 32;

// Below this much free buffer as the guest last saw it, tell the guest about freed space
// (Linux's sender waits for credit instead of asking).
constexpr uint32_t kCreditUpdateThreshold = VsockDevice::kMaxPacketPayload;

uint64_t Key(uint32_t local_port, uint32_t peer_port) {
  return (uint64_t{local_port} << 32) | peer_port;
}

Result<sockaddr_un> UnixAddress(const std::string& path) {
  Result<sockaddr_un> addr = UnixSocketAddress(path);
  if (!addr) return Fail(addr.error().Context("vsock"));
  return addr;
}

// Parses "CONNECT <port>\n" as Firecracker does: whitespace-separated, the verb in any case,
// the port a decimal u32.
std::optional<uint32_t> ParseConnectLine(const std::string& line) {
  size_t i = 0;
  auto word = [&]() {
    while (i < line.size() && std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    const size_t start = i;
    while (i < line.size() && !std::isspace(static_cast<unsigned char>(line[i]))) ++i;
    return line.substr(start, i - start);
  };
  std::string verb = word();
  std::transform(verb.begin(), verb.end(), verb.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (verb != "connect") return std::nullopt;
  const std::string port = word();
  if (port.empty() || port.size() > 10) return std::nullopt;
  uint64_t value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  if (value > UINT32_MAX || !word().empty()) return std::nullopt;
  return static_cast<uint32_t>(value);
}

ssize_t RetryEintr(auto call) {
  ssize_t result;
  do {
    result = call();
  } while (result < 0 && errno == EINTR);  // vCPU threads get kick signals
  return result;
}

}  // namespace

struct VsockDevice::Connection {
  UniqueFd fd;
  uint32_t local_port = 0;
  uint32_t peer_port = 0;
  State state = State::kLocalInit;
  bool connecting = false;   // a guest REQUEST whose host socket the event thread opens next
  bool peer_no_rcv = false;  // SHUTDOWN flags the guest sent
  bool peer_no_send = false;
  uint32_t pending = 0;     // kPend* bits
  bool queued = false;      // in rx_order_
  uint32_t registered = 0;  // epoll events registered for fd (0: not registered)
  // Guest data the host socket has not taken yet: [tx_head, tx_buf.size()).
  std::vector<uint8_t> tx_buf;
  size_t tx_head = 0;
  // Credit (wrapping counters, as the spec's): what we forwarded to the host, what the guest
  // sent us, what we sent the guest, the guest's buffer and what it consumed of ours.
  uint32_t fwd_cnt = 0;
  uint32_t received = 0;
  uint32_t rx_cnt = 0;
  uint32_t peer_buf_alloc = 0;
  uint32_t peer_fwd_cnt = 0;
  uint32_t last_fwd_cnt_to_peer = 0;
  std::optional<Clock::time_point> expiry;

  size_t Buffered() const { return tx_buf.size() - tx_head; }
  uint32_t PeerCredit() const { return peer_buf_alloc - (rx_cnt - peer_fwd_cnt); }
  bool WantsHostInput() const {
    const bool open = state == State::kEstablished || (state == State::kPeerClosed && !peer_no_rcv);
    return open && !(pending & kPendRw) && PeerCredit() != 0;
  }
  bool GuestNeedsCreditUpdate() const {
    // Free space as the guest computes it from the last fwd_cnt we told it.
    const uint32_t seen_free = kConnBufferSize - (received - last_fwd_cnt_to_peer);
    const uint32_t real_free = kConnBufferSize - static_cast<uint32_t>(Buffered());
    return seen_free < kCreditUpdateThreshold && real_free > seen_free;
  }
};

VsockDevice::VsockDevice(VsockConfig config) : config_(std::move(config)) {}

Result<std::unique_ptr<VsockDevice>> VsockDevice::Create(VsockConfig config) {
  if (config.guest_cid < 3 || config.guest_cid >= UINT32_MAX) {
    return Fail(ErrorCode::kInvalidArgument,
                "vsock: guest_cid " + std::to_string(config.guest_cid) +
                    " is reserved (it must be at least 3 and below 4294967295)");
  }
  const sockaddr_un addr = TRY(UnixAddress(config.uds_path));
  // "<uds_path>_<port>" must fit too, for the longest port.
  TRY(UnixAddress(config.uds_path + "_4294967295"));
  std::unique_ptr<VsockDevice> device(new VsockDevice(std::move(config)));
  device->listener_.Reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!device->listener_) return FailErrno("vsock: socket");
  if (::bind(device->listener_.Get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    return FailErrno("vsock: binding " + device->config_.uds_path);
  }
  if (::listen(device->listener_.Get(), 64) != 0) return FailErrno("vsock: listen");
  device->epoll_.Reset(::epoll_create1(EPOLL_CLOEXEC));
  device->kick_.Reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  device->stop_.Reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!device->epoll_ || !device->kick_ || !device->stop_) return FailErrno("vsock: epoll/eventfd");
  for (auto [fd, tag] :
       {std::pair{device->listener_.Get(), kTagListener}, std::pair{device->kick_.Get(), kTagKick},
        std::pair{device->stop_.Get(), kTagStop}}) {
    epoll_event event{.events = EPOLLIN, .data = {.u64 = tag}};
    if (::epoll_ctl(device->epoll_.Get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      return FailErrno("vsock: epoll_ctl");
    }
  }
  return device;
}

VsockDevice::~VsockDevice() {
  Stop();
  if (listener_) ::unlink(config_.uds_path.c_str());
}

Status VsockDevice::Start(std::function<void()> notify_rx) {
  if (thread_.joinable()) return Fail(ErrorCode::kFailedPrecondition, "vsock: already started");
  notify_rx_ = std::move(notify_rx);
  stopping_ = false;
  thread_ = std::thread([this] {
    while (!stopping_.load()) {
      Result<bool> pending = PollEvents(-1);
      if (pending && *pending && notify_rx_ && !stopping_.load()) notify_rx_();
    }
  });
  return Ok();
}

void VsockDevice::Stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  const uint64_t one = 1;
  (void)!::write(stop_.Get(), &one, sizeof(one));
  thread_.join();
}

void VsockDevice::ReadConfig(uint64_t offset, std::span<uint8_t> data) {
  // struct virtio_vsock_config { le64 guest_cid; }
  uint8_t config[8];
  std::memcpy(config, &config_.guest_cid, sizeof(config));
  ReadConfigBytes(config, offset, data);
}

Result<bool> VsockDevice::ProcessQueue(size_t index, Virtqueue& queue, GuestMemory& memory) {
  std::lock_guard lock(mutex_);
  if (index == kRxQueue) return ProcessRxLocked(queue, memory);
  if (index == kTxQueue) {
    const bool used = TRY(ProcessTxLocked(queue, memory));
    if (HasPendingRxLocked()) KickRx();
    return used;
  }
  // The event queue only carries TRANSPORT_RESET after a snapshot restore: keep its buffers.
  if (!transport_reset_pending_) return false;
  std::optional<DescriptorChain> chain = TRY(queue.Pop(memory));
  if (!chain) return false;                     // sent once the driver offers an event buffer
  const uint32_t event = kEventTransportReset;  // struct virtio_vsock_event: le32 id
  uint8_t bytes[4];
  std::memcpy(bytes, &event, sizeof(bytes));
  BufferCursor out(memory, chain->writable);
  TRY(out.Write(bytes));
  TRY(queue.PushUsed(memory, chain->head, sizeof(bytes)));
  transport_reset_pending_ = false;
  return true;
}

void VsockDevice::RequestTransportReset() {
  std::lock_guard lock(mutex_);
  transport_reset_pending_ = true;
}

void VsockDevice::Reset() {
  std::lock_guard lock(mutex_);
  while (!connections_.empty()) RemoveConnectionLocked(connections_.begin()->first);
  rx_order_.clear();
  queued_resets_.clear();
  guest_connects_.clear();
}

// ---- guest -> host (tx queue, vCPU threads) ----

Result<bool> VsockDevice::ProcessTxLocked(Virtqueue& queue, GuestMemory& memory) {
  bool used = false;
  for (uint32_t served = 0; served < queue.state().size; ++served) {
    std::optional<DescriptorChain> chain = TRY(queue.Pop(memory));
    if (!chain) break;
    HandleTxPacketLocked(memory, *chain);
    TRY(queue.PushUsed(memory, chain->head, 0));
    used = true;
  }
  return used;
}

void VsockDevice::HandleTxPacketLocked(GuestMemory& memory, const DescriptorChain& chain) {
  VsockHeader header;
  BufferCursor cursor(memory, chain.readable);
  if (cursor.Remaining() < sizeof(header) ||
      !cursor.Read(std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header)))) {
    ++stats_.dropped_packets;  // no room for a header: nothing to answer to
    return;
  }
  // A length past the chain or past the largest packet, or addresses that are not
  // guest -> host: dropped (an RST would go to whoever the header names).
  if (header.len > cursor.Remaining() || header.len > kMaxPacketPayload ||
      header.src_cid != config_.guest_cid || header.dst_cid != kVsockHostCid) {
    ++stats_.dropped_packets;
    return;
  }
  const uint64_t key = Key(header.dst_port, header.src_port);
  auto found = connections_.find(key);
  if (header.type != kVsockTypeStream || header.op < kVsockOpRequest ||
      header.op > kVsockOpCreditRequest) {
    ++stats_.dropped_packets;
    if (found != connections_.end()) {
      KillLocked(*found->second);
    } else {
      QueueResetLocked(header.dst_port, header.src_port);
    }
    return;
  }
  if (found == connections_.end()) {
    if (header.op == kVsockOpRequest) {
      HandleGuestRequestLocked(header);
    } else if (header.op != kVsockOpRst) {  // never answer an RST with one
      QueueResetLocked(header.dst_port, header.src_port);
    }
    return;
  }
  if (header.op == kVsockOpRst) {
    RemoveConnectionLocked(key);
    return;
  }
  ConnectionTxLocked(*found->second, header, memory, chain);
}

void VsockDevice::HandleGuestRequestLocked(const VsockHeader& header) {
  if (connections_.size() + pending_streams_.size() >= kMaxConnections) {
    QueueResetLocked(header.dst_port, header.src_port);
    return;
  }
  // The connect to "<uds>_<port>" is left to the event thread, so vCPU threads never create
  // or connect sockets (their seccomp list has neither call). The entry holds the ports until
  // then; a RST or a malformed packet from the guest meanwhile ends it and the connect is skipped.
  auto conn = std::make_unique<Connection>();
  conn->local_port = header.dst_port;
  conn->peer_port = header.src_port;
  conn->state = State::kPeerInit;
  conn->connecting = true;
  conn->peer_buf_alloc = header.buf_alloc;
  conn->peer_fwd_cnt = header.fwd_cnt;
  const uint64_t key = Key(conn->local_port, conn->peer_port);
  connections_[key] = std::move(conn);
  guest_connects_.push_back(key);
  KickRx();
}

void VsockDevice::ConnectGuestRequestsLocked() {
  while (!guest_connects_.empty()) {
    const uint64_t key = guest_connects_.front();
    guest_connects_.pop_front();
    auto found = connections_.find(key);
    if (found == connections_.end() || !found->second->connecting) continue;  // gone meanwhile
    Connection& conn = *found->second;
    conn.connecting = false;
    Result<sockaddr_un> addr =
        UnixAddress(config_.uds_path + "_" + std::to_string(conn.local_port));
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    // A non-blocking AF_UNIX connect completes at once or fails (EAGAIN: backlog full), so
    // the event thread never waits for the host program either.
    if (!addr || !fd || RetryEintr([&] {
                          return ::connect(fd.Get(), reinterpret_cast<const sockaddr*>(&*addr),
                                           sizeof(*addr));
                        }) != 0) {
      const uint32_t local = conn.local_port, peer = conn.peer_port;
      RemoveConnectionLocked(key);
      QueueResetLocked(local, peer);
      continue;
    }
    conn.fd = std::move(fd);
    conn.pending = kPendResponse;
    connection_by_fd_[conn.fd.Get()] = key;
    QueueRxLocked(conn);
  }
}

void VsockDevice::ConnectionTxLocked(Connection& conn, const VsockHeader& header,
                                     GuestMemory& memory, const DescriptorChain& chain) {
  conn.peer_buf_alloc = header.buf_alloc;
  conn.peer_fwd_cnt = header.fwd_cnt;
  const bool data_to_host =
      conn.state == State::kEstablished || (conn.state == State::kPeerClosed && !conn.peer_no_send);
  switch (header.op) {
    case kVsockOpRw:
      if (!data_to_host || header.len == 0) break;
      SendToHostLocked(conn, memory, chain, header.len);
      if (conn.state != State::kKilled && conn.GuestNeedsCreditUpdate()) {
        conn.pending |= kPendCreditUpdate;
        QueueRxLocked(conn);
      }
      break;
    case kVsockOpResponse: {
      if (conn.state != State::kLocalInit) break;
      conn.expiry.reset();
      conn.state = State::kEstablished;
      // Firecracker's acknowledgement to the host program; a fresh socket takes a dozen bytes.
      const std::string ack = "OK " + std::to_string(conn.local_port) + "\n";
      const ssize_t sent = RetryEintr([&] {
        return ::send(conn.fd.Get(), ack.data(), ack.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      });
      if (sent != static_cast<ssize_t>(ack.size())) KillLocked(conn);
      break;
    }
    case kVsockOpShutdown:
      if (conn.state != State::kEstablished && conn.state != State::kPeerClosed) break;
      conn.state = State::kPeerClosed;
      conn.peer_no_rcv |= (header.flags & kVsockShutdownRcv) != 0;
      conn.peer_no_send |= (header.flags & kVsockShutdownSend) != 0;
      if (conn.peer_no_rcv && conn.peer_no_send) {
        if (conn.Buffered() == 0) {
          conn.pending |= kPendRst;
          QueueRxLocked(conn);
        } else if (!conn.expiry) {
          conn.expiry = Clock::now() + kShutdownTimeout;
        }
      }
      break;
    case kVsockOpCreditRequest:
      if (conn.state == State::kEstablished || conn.state == State::kPeerInit ||
          (conn.state == State::kPeerClosed && !conn.peer_no_send)) {
        conn.pending |= kPendCreditUpdate;
        QueueRxLocked(conn);
      }
      break;
    default:
      break;  // CREDIT_UPDATE only carried credit; anything else is invalid here: dropped
  }
  // New credit may let host data flow again (a killed connection unregisters).
  UpdateInterestLocked(conn);
}

void VsockDevice::SendToHostLocked(Connection& conn, GuestMemory& memory,
                                   const DescriptorChain& chain, uint32_t len) {
  BufferCursor cursor(memory, chain.readable);
  uint8_t skip[sizeof(VsockHeader)];
  (void)cursor.Read(skip);
  conn.received += len;
  bool host_full = conn.Buffered() > 0;  // keep the byte order: behind what is buffered
  bool failed = false;
  (void)cursor.ForEach(len, [&](std::span<uint8_t> bytes) -> Status {
    if (failed) return Ok();
    size_t done = 0;
    if (!host_full) {
      const ssize_t sent = RetryEintr([&] {
        return ::send(conn.fd.Get(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      });
      if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        failed = true;
        return Ok();
      }
      done = sent < 0 ? 0 : static_cast<size_t>(sent);
      conn.fwd_cnt += static_cast<uint32_t>(done);
      host_full = done < bytes.size();
    }
    const size_t rest = bytes.size() - done;
    if (rest == 0) return Ok();
    if (conn.Buffered() + rest > kConnBufferSize) {
      // The guest sent past the credit we gave it: it can only hurt its own connection.
      ++stats_.flood_resets;
      failed = true;
      return Ok();
    }
    if (conn.tx_head > 0 && conn.tx_head == conn.tx_buf.size()) {
      conn.tx_buf.clear();
      conn.tx_head = 0;
    }
    conn.tx_buf.insert(conn.tx_buf.end(), bytes.begin() + static_cast<ptrdiff_t>(done),
                       bytes.end());
    return Ok();
  });
  if (failed) KillLocked(conn);
}

// ---- host -> guest (rx queue) ----

bool VsockDevice::HasPendingRxLocked() const {
  return !queued_resets_.empty() || !rx_order_.empty();
}

Result<bool> VsockDevice::ProcessRxLocked(Virtqueue& queue, GuestMemory& memory) {
  bool used = false;
  for (uint32_t served = 0; served < queue.state().size && HasPendingRxLocked(); ++served) {
    std::optional<DescriptorChain> chain = TRY(queue.Pop(memory));
    if (!chain) break;
    if (!chain->readable.empty() || chain->WritableBytes() < sizeof(VsockHeader)) {
      return Fail(ErrorCode::kInvalidArgument,
                  "vsock rx buffer is not a device-writable chain of at least 44 bytes");
    }
    VsockHeader header;
    if (!TRY(NextRxPacketLocked(memory, *chain, header))) {
      // Nothing to say after all (the host had no data yet): give the buffer back unread.
      --queue.state().next_avail;
      break;
    }
    BufferCursor out(memory, chain->writable);
    TRY(out.Write(std::span(reinterpret_cast<const uint8_t*>(&header), sizeof(header))));
    TRY(queue.PushUsed(memory, chain->head, static_cast<uint32_t>(sizeof(header) + header.len)));
    used = true;
  }
  return used;
}

Result<bool> VsockDevice::NextRxPacketLocked(GuestMemory& memory, const DescriptorChain& chain,
                                             VsockHeader& header) {
  if (!queued_resets_.empty()) {
    auto [local_port, peer_port] = queued_resets_.front();
    queued_resets_.pop_front();
    header = VsockHeader{.src_cid = kVsockHostCid,
                         .dst_cid = config_.guest_cid,
                         .src_port = local_port,
                         .dst_port = peer_port,
                         .type = kVsockTypeStream,
                         .op = kVsockOpRst};
    ++stats_.resets_sent;
    return true;
  }
  // Each connection is looked at once per call at most.
  for (size_t rounds = rx_order_.size(); rounds > 0 && !rx_order_.empty(); --rounds) {
    const uint64_t key = rx_order_.front();
    auto found = connections_.find(key);
    if (found == connections_.end()) {
      rx_order_.pop_front();
      continue;
    }
    Connection& conn = *found->second;
    const bool produced = ConnectionRxLocked(conn, memory, chain, header);
    if (conn.pending == 0 || !produced) {
      rx_order_.pop_front();
      conn.queued = false;
      if (conn.pending != 0) QueueRxLocked(conn);  // still something, later
    }
    if (!produced) continue;
    if (header.op == kVsockOpRst) {
      ++stats_.resets_sent;
      RemoveConnectionLocked(key);
    } else {
      UpdateInterestLocked(conn);
    }
    return true;
  }
  return false;
}

bool VsockDevice::ConnectionRxLocked(Connection& conn, GuestMemory& memory,
                                     const DescriptorChain& chain, VsockHeader& header) {
  header = VsockHeader{.src_cid = kVsockHostCid,
                       .dst_cid = config_.guest_cid,
                       .src_port = conn.local_port,
                       .dst_port = conn.peer_port,
                       .type = kVsockTypeStream,
                       .buf_alloc = kConnBufferSize,
                       .fwd_cnt = conn.fwd_cnt};
  auto take = [&](uint32_t bit) {
    const bool set = (conn.pending & bit) != 0;
    conn.pending &= ~bit;
    return set;
  };
  if (take(kPendRst)) {
    header.op = kVsockOpRst;
    return true;
  }
  conn.last_fwd_cnt_to_peer = conn.fwd_cnt;  // every packet below carries it
  if (take(kPendResponse)) {
    conn.state = State::kEstablished;
    header.op = kVsockOpResponse;
    return true;
  }
  if (take(kPendRequest)) {
    conn.expiry = Clock::now() + kRequestTimeout;
    header.op = kVsockOpRequest;
    return true;
  }
  if (take(kPendRw)) {
    const bool open = conn.state == State::kEstablished ||
                      (conn.state == State::kPeerClosed && !conn.peer_no_rcv);
    if (!open) {
      KillLocked(conn);
      take(kPendRst);
      header.op = kVsockOpRst;
      return true;
    }
    const uint32_t credit = conn.PeerCredit();
    if (credit == 0) {
      header.op = kVsockOpCreditRequest;
      return true;
    }
    // Read straight from the host socket into the guest's buffer, after the header.
    const uint64_t room = chain.WritableBytes() - sizeof(VsockHeader);
    if (room == 0) {
      // A header-only buffer cannot carry data: wait for a bigger one without polling the
      // socket (re-arming it would spin the event thread on the same buffer).
      conn.pending |= kPendRw;
      return false;
    }
    const uint32_t max =
        static_cast<uint32_t>(std::min<uint64_t>({room, credit, kMaxPacketPayload}));
    BufferCursor out(memory, chain.writable);
    uint8_t skip[sizeof(VsockHeader)] = {};
    (void)out.Write(skip);
    uint32_t got = 0;
    bool eof = false, error = false, drained = false;
    (void)out.ForEach(max, [&](std::span<uint8_t> bytes) -> Status {
      if (eof || error || drained) return Ok();
      const ssize_t n = RetryEintr(
          [&] { return ::recv(conn.fd.Get(), bytes.data(), bytes.size(), MSG_DONTWAIT); });
      if (n < 0) {
        drained = errno == EAGAIN || errno == EWOULDBLOCK;
        error = !drained;
      } else if (n == 0) {
        eof = true;
      } else {
        got += static_cast<uint32_t>(n);
        drained = static_cast<size_t>(n) < bytes.size();
      }
      return Ok();
    });
    if (got > 0) {
      header.op = kVsockOpRw;
      header.len = got;
      conn.rx_cnt += got;
      if (!drained) conn.pending |= kPendRw;  // there may be more
      return true;
    }
    if (eof) {
      // The host closed its end: ask the guest to close too, and reset if it dawdles.
      conn.state = State::kLocalClosed;
      conn.expiry = Clock::now() + kShutdownTimeout;
      header.op = kVsockOpShutdown;
      header.flags = kVsockShutdownRcv | kVsockShutdownSend;
      return true;
    }
    if (error) {
      KillLocked(conn);
      take(kPendRst);
      header.op = kVsockOpRst;
      return true;
    }
  }
  if (take(kPendCreditUpdate)) {
    header.op = kVsockOpCreditUpdate;
    return true;
  }
  UpdateInterestLocked(conn);
  return false;
}

// ---- host sockets (event thread) ----

Result<bool> VsockDevice::PollEvents(int timeout_ms) {
  {
    std::lock_guard lock(mutex_);
    // Wake for the nearest connection timer.
    for (const auto& [key, conn] : connections_) {
      if (!conn->expiry) continue;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(*conn->expiry - Clock::now());
      const int wait = static_cast<int>(std::clamp<int64_t>(left.count() + 1, 0, 60000));
      if (timeout_ms < 0 || wait < timeout_ms) timeout_ms = wait;
    }
  }
  epoll_event events[32];
  const int count = ::epoll_wait(epoll_.Get(), events, 32, timeout_ms);
  if (count < 0 && errno != EINTR) return FailErrno("vsock: epoll_wait");
  std::lock_guard lock(mutex_);
  for (int i = 0; i < count; ++i) {
    const uint64_t tag = events[i].data.u64;
    if (tag == kTagListener) {
      AcceptLocked();
    } else if (tag == kTagKick || tag == kTagStop) {
      uint64_t value;
      (void)!::read(tag == kTagKick ? kick_.Get() : stop_.Get(), &value, sizeof(value));
    } else if (auto conn = connection_by_fd_.find(static_cast<int>(tag));
               conn != connection_by_fd_.end()) {
      auto found = connections_.find(conn->second);
      if (found != connections_.end()) ConnectionEventLocked(*found->second, events[i].events);
    } else if (pending_streams_.contains(static_cast<int>(tag))) {
      PendingStreamReadableLocked(static_cast<int>(tag));
    }
  }
  ConnectGuestRequestsLocked();
  SweepExpiredLocked();
  return HasPendingRxLocked();
}

void VsockDevice::AcceptLocked() {
  for (int round = 0; round < 64; ++round) {
    UniqueFd fd(::accept4(listener_.Get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return;  // EAGAIN, or a client that went away
    if (connections_.size() + pending_streams_.size() >= kMaxConnections) continue;  // closed
    epoll_event event{.events = EPOLLIN, .data = {.u64 = static_cast<uint64_t>(fd.Get())}};
    if (::epoll_ctl(epoll_.Get(), EPOLL_CTL_ADD, fd.Get(), &event) != 0) continue;
    const int raw = fd.Get();
    pending_streams_[raw] = PendingStream{.fd = std::move(fd), .line = {}};
  }
}

void VsockDevice::PendingStreamReadableLocked(int fd) {
  PendingStream& stream = pending_streams_[fd];
  // Peek, and consume only up to the newline: bytes after it belong to the guest.
  char bytes[kMaxConnectLine];
  const size_t want = kMaxConnectLine - stream.line.size();
  const ssize_t peeked =
      RetryEintr([&] { return ::recv(fd, bytes, want, MSG_PEEK | MSG_DONTWAIT); });
  if (peeked < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
  bool done = false, bad = peeked <= 0;
  if (!bad) {
    const size_t have = static_cast<size_t>(peeked);
    const char* newline = static_cast<const char*>(std::memchr(bytes, '\n', have));
    const size_t take = newline ? static_cast<size_t>(newline - bytes) + 1 : have;
    (void)RetryEintr([&] { return ::recv(fd, bytes, take, MSG_DONTWAIT); });
    stream.line.append(bytes, take);
    done = newline != nullptr;
    bad = !done && stream.line.size() >= kMaxConnectLine;
  }
  if (!bad && !done) return;
  ::epoll_ctl(epoll_.Get(), EPOLL_CTL_DEL, fd, nullptr);
  PendingStream owned = std::move(stream);
  pending_streams_.erase(fd);
  const std::optional<uint32_t> port = bad ? std::nullopt : ParseConnectLine(owned.line);
  if (!port) return;  // Firecracker drops the host connection on a bad command
  auto conn = std::make_unique<Connection>();
  conn->fd = std::move(owned.fd);
  conn->local_port = AllocateHostPortLocked();
  conn->peer_port = *port;
  conn->state = State::kLocalInit;
  conn->pending = kPendRequest;
  // Also when the guest never takes the REQUEST (no driver yet, no rx buffers): the host
  // client must not wait forever.
  conn->expiry = Clock::now() + kRequestTimeout;
  Connection& ref = *conn;
  const uint64_t key = Key(ref.local_port, ref.peer_port);
  connection_by_fd_[ref.fd.Get()] = key;
  connections_[key] = std::move(conn);
  QueueRxLocked(ref);
}

uint32_t VsockDevice::AllocateHostPortLocked() {
  // Round robin over [2^30, 2^31), skipping ports in use (at most kMaxConnections are).
  for (;;) {
    last_host_port_ = ((last_host_port_ + 1) & ~(1u << 31)) | (1u << 30);
    if (host_ports_.insert(last_host_port_).second) return last_host_port_;
  }
}

void VsockDevice::ConnectionEventLocked(Connection& conn, uint32_t events) {
  if ((events & EPOLLOUT) && conn.Buffered() > 0) FlushLocked(conn);
  if (conn.state == State::kKilled) return;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && conn.WantsHostInput()) {
    // The packet is built when the guest has an rx buffer for it.
    conn.pending |= kPendRw;
    QueueRxLocked(conn);
  }
  UpdateInterestLocked(conn);
}

void VsockDevice::FlushLocked(Connection& conn) {
  const ssize_t sent = RetryEintr([&] {
    return ::send(conn.fd.Get(), conn.tx_buf.data() + conn.tx_head, conn.Buffered(),
                  MSG_DONTWAIT | MSG_NOSIGNAL);
  });
  if (sent < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) KillLocked(conn);
    return;
  }
  conn.tx_head += static_cast<size_t>(sent);
  conn.fwd_cnt += static_cast<uint32_t>(sent);
  if (conn.Buffered() == 0) {
    std::vector<uint8_t>().swap(conn.tx_buf);  // give the memory back
    conn.tx_head = 0;
  } else if (conn.tx_head > kConnBufferSize / 2) {
    conn.tx_buf.erase(conn.tx_buf.begin(),
                      conn.tx_buf.begin() + static_cast<ptrdiff_t>(conn.tx_head));
    conn.tx_head = 0;
  }
  if (conn.state == State::kPeerClosed && conn.peer_no_rcv && conn.peer_no_send &&
      conn.Buffered() == 0) {
    conn.pending |= kPendRst;
    QueueRxLocked(conn);
  } else if (conn.GuestNeedsCreditUpdate()) {
    conn.pending |= kPendCreditUpdate;
    QueueRxLocked(conn);
  }
}

void VsockDevice::KillLocked(Connection& conn) {
  conn.state = State::kKilled;
  conn.connecting = false;
  conn.pending = kPendRst;
  conn.expiry.reset();
  std::vector<uint8_t>().swap(conn.tx_buf);  // an RST forfeits what the host did not take
  conn.tx_head = 0;
  QueueRxLocked(conn);
  UpdateInterestLocked(conn);
  // The host side learns at once (EOF), even if the guest never takes the RST (no driver, or
  // no rx buffers); the entry stays until it does, so the guest's ports stay consistent.
  if (conn.fd) {
    if (conn.registered != 0) ::epoll_ctl(epoll_.Get(), EPOLL_CTL_DEL, conn.fd.Get(), nullptr);
    conn.registered = 0;
    connection_by_fd_.erase(conn.fd.Get());
    conn.fd.Reset();
  }
}

void VsockDevice::QueueRxLocked(Connection& conn) {
  if (conn.queued) return;
  conn.queued = true;
  rx_order_.push_back(Key(conn.local_port, conn.peer_port));
}

void VsockDevice::QueueResetLocked(uint32_t local_port, uint32_t peer_port) {
  if (queued_resets_.size() >= kMaxQueuedResets) {
    ++stats_.resets_not_queued;  // a guest flooding bad packets only loses answers
    return;
  }
  queued_resets_.emplace_back(local_port, peer_port);
}

void VsockDevice::UpdateInterestLocked(Connection& conn) {
  if (!conn.fd) return;  // killed: the host side is closed already
  uint32_t wanted = 0;
  if (conn.state != State::kKilled) {
    if (conn.Buffered() > 0) wanted |= EPOLLOUT;
    if (conn.WantsHostInput()) wanted |= EPOLLIN;
  }
  if (wanted == conn.registered) return;
  // Unregistered when nothing is wanted: epoll reports a hung-up socket even with no events.
  epoll_event event{.events = wanted, .data = {.u64 = static_cast<uint64_t>(conn.fd.Get())}};
  const int op = conn.registered == 0 ? EPOLL_CTL_ADD : wanted == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
  if (::epoll_ctl(epoll_.Get(), op, conn.fd.Get(), &event) == 0) conn.registered = wanted;
}

void VsockDevice::RemoveConnectionLocked(uint64_t key) {
  auto found = connections_.find(key);
  if (found == connections_.end()) return;
  Connection& conn = *found->second;
  if (conn.fd) {
    if (conn.registered != 0) ::epoll_ctl(epoll_.Get(), EPOLL_CTL_DEL, conn.fd.Get(), nullptr);
    connection_by_fd_.erase(conn.fd.Get());
  }
  if (conn.local_port >= kFirstHostPort) host_ports_.erase(conn.local_port);
  connections_.erase(found);  // closes the host socket; rx_order_ skips the stale key
}

void VsockDevice::SweepExpiredLocked() {
  const auto now = Clock::now();
  for (auto& [key, conn] : connections_) {
    if (conn->expiry && *conn->expiry <= now && conn->state != State::kKilled) KillLocked(*conn);
  }
}

void VsockDevice::KickRx() {
  const uint64_t one = 1;
  (void)!::write(kick_.Get(), &one, sizeof(one));
}

size_t VsockDevice::ConnectionCount() const {
  std::lock_guard lock(mutex_);
  return connections_.size();
}

size_t VsockDevice::QueuedResetCount() const {
  std::lock_guard lock(mutex_);
  return queued_resets_.size();
}

size_t VsockDevice::BufferedBytes() const {
  std::lock_guard lock(mutex_);
  size_t total = 0;
  for (const auto& [key, conn] : connections_) total += conn->Buffered();
  return total;
}

VsockStats VsockDevice::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace tartarus::vmm::virtio
