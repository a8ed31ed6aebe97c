// tartarus-vmm (Tartarus's KVM microVM monitor): tests for virtio-vsock and its hybrid
// Unix-socket backend. FakeDriver plays the guest's rx/tx queues through the real virtio-mmio
// transport; the host side is real Unix sockets in a temporary directory; the event thread runs.
#include "vmm/virtio/vsock.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "vmm/virtio/mmio.h"
#include "vmm/virtio/virtio_testing.h"

namespace tartarus::vmm::virtio {
namespace {

using testing::FakeDriver;
using testing::FakeIrq;
using testing::Segment;

constexpr uint64_t kGuestCid = 3;
constexpr uint16_t kQueueSize = 128;
constexpr auto kWait = std::chrono::seconds(3);

struct Packet {
  VsockHeader header;
  std::vector<uint8_t> payload;
};

VsockHeader FromGuest(uint16_t op, uint32_t src_port, uint32_t dst_port, uint32_t len = 0,
                      uint32_t buf_alloc = 65536, uint32_t fwd_cnt = 0) {
  return VsockHeader{.src_cid = kGuestCid,
                     .dst_cid = kVsockHostCid,
                     .src_port = src_port,
                     .dst_port = dst_port,
                     .len = len,
                     .type = kVsockTypeStream,
                     .op = op,
                     .buf_alloc = buf_alloc,
                     .fwd_cnt = fwd_cnt};
}

UniqueFd UnixSocket() { return UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)); }

sockaddr_un Address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  return addr;
}

UniqueFd Connect(const std::string& path) {
  UniqueFd fd = UnixSocket();
  const sockaddr_un addr = Address(path);
  if (::connect(fd.Get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  return fd;
}

UniqueFd Listen(const std::string& path) {
  UniqueFd fd = UnixSocket();
  const sockaddr_un addr = Address(path);
  if (::bind(fd.Get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) return {};
  if (::listen(fd.Get(), 4) != 0) return {};
  return fd;
}

void WriteAll(int fd, std::string_view text) {
  ASSERT_EQ(::send(fd, text.data(), text.size(), MSG_NOSIGNAL), static_cast<ssize_t>(text.size()));
}

// Reads until want bytes arrived, EOF, or the deadline; returns what came.
std::string ReadFor(int fd, size_t want) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char buffer[4096];
    const ssize_t n = ::recv(fd, buffer, std::min(sizeof(buffer), want - out.size()), 0);
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// Whether the peer closed fd (EOF or reset) within the deadline.
bool SeesClose(int fd) {
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    char byte;
    if (::recv(fd, &byte, 1, MSG_DONTWAIT) <= 0) return true;
  }
  return false;
}

class VsockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory_.emplace(std::move(GuestMemory::CreateAnonymous(8 << 20).value()));
    rx_.emplace(*memory_, kQueueSize, 0x10000);
    tx_.emplace(*memory_, kQueueSize, 0x200000);
    event_.emplace(*memory_, 16, 0x600000);
    char dir[] = "/tmp/tartarus-vsock-XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    uds_ = dir_ + "/v.sock";
    auto device = VsockDevice::Create(VsockConfig{.guest_cid = kGuestCid, .uds_path = uds_});
    ASSERT_TRUE(device) << device.error().message;
    device_ = device->get();
    transport_ =
        std::make_unique<MmioTransport>(std::move(*device), *memory_, &irq_,
                                        [this](const Error& e) { errors_.push_back(e.message); });
    Initialize();
    ASSERT_TRUE(device_->Start([this] { transport_->NotifyFromHost(VsockDevice::kRxQueue); }));
  }
  void TearDown() override {
    if (device_ != nullptr) device_->Stop();  // before the transport it calls into goes
    transport_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Set(uint64_t offset, uint32_t value) {
    transport_->Write(offset, std::span(reinterpret_cast<const uint8_t*>(&value), 4));
  }
  uint32_t Get(uint64_t offset) {
    uint32_t value;
    transport_->Read(offset, std::span(reinterpret_cast<uint8_t*>(&value), 4));
    return value;
  }
  void Initialize() {
    Set(kRegStatus, kStatusAcknowledge);
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver);
    Set(kRegDriverFeaturesSel, 1);
    Set(kRegDriverFeatures, 1);  // VERSION_1
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    uint32_t index = 0;
    for (FakeDriver* driver : {&*rx_, &*tx_, &*event_}) {
      Set(kRegQueueSel, index++);
      Set(kRegQueueNum, driver->size());
      Set(kRegQueueDescLow, static_cast<uint32_t>(driver->desc_addr()));
      Set(kRegQueueDriverLow, static_cast<uint32_t>(driver->avail_addr()));
      Set(kRegQueueDeviceLow, static_cast<uint32_t>(driver->used_addr()));
      Set(kRegQueueReady, 1);
    }
    Set(kRegStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    ASSERT_EQ(Get(kRegStatus) & kStatusDriverOk, kStatusDriverOk);
  }

  void AddRxBuffers(int count, uint32_t size = 4096) {
    for (int i = 0; i < count; ++i) {
      const uint64_t addr = rx_->Alloc(size);
      const Segment chain[] = {{addr, size, true}};
      const uint16_t head = rx_->AddChain(chain).value();
      rx_buffers_[head] = addr;
    }
    Set(kRegQueueNotify, VsockDevice::kRxQueue);
  }

  // Puts one packet on the tx queue (header and payload in separate descriptors) and notifies.
  void Send(const VsockHeader& header, std::string_view payload = {}) {
    const uint64_t hdr = tx_->Alloc(sizeof(header));
    ASSERT_TRUE(tx_->WriteBytes(hdr, std::span(reinterpret_cast<const uint8_t*>(&header), 44)));
    std::vector<Segment> chain = {{hdr, 44, false}};
    if (!payload.empty()) {
      const uint64_t data = tx_->Alloc(payload.size());
      ASSERT_TRUE(tx_->WriteBytes(
          data, std::span(reinterpret_cast<const uint8_t*>(payload.data()), payload.size())));
      chain.push_back({data, static_cast<uint32_t>(payload.size()), false});
    }
    ASSERT_TRUE(tx_->AddChain(chain));
    Set(kRegQueueNotify, VsockDevice::kTxQueue);
  }

  // The next packet the device gave the guest, waiting up to timeout.
  std::optional<Packet> NextRx(std::chrono::milliseconds timeout = kWait) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (rx_->UsedIdx().value() == rx_seen_) {
      if (std::chrono::steady_clock::now() > deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const testing::UsedElement used = rx_->Used(rx_seen_++).value();
    const uint64_t addr = rx_buffers_.at(static_cast<uint16_t>(used.id));
    Packet packet;
    std::memcpy(&packet.header, rx_->ReadBytes(addr, 44).value().data(), 44);
    EXPECT_EQ(used.len, 44 + packet.header.len);
    packet.payload = rx_->ReadBytes(addr + 44, packet.header.len).value();
    return packet;
  }

  // Host-initiated connection to guest port 52, accepted by the guest.
  UniqueFd OpenHostConnection(uint32_t guest_port = 52) {
    UniqueFd client = Connect(uds_);
    EXPECT_TRUE(client.Valid());
    WriteAll(client.Get(), "CONNECT " + std::to_string(guest_port) + "\n");
    std::optional<Packet> request = NextRx();
    EXPECT_TRUE(request);
    if (!request) return client;
    EXPECT_EQ(request->header.op, kVsockOpRequest);
    host_port_ = request->header.src_port;
    Send(FromGuest(kVsockOpResponse, guest_port, host_port_));
    EXPECT_EQ(ReadFor(client.Get(), 14), "OK " + std::to_string(host_port_) + "\n");
    return client;
  }

  std::optional<GuestMemory> memory_;
  std::optional<FakeDriver> rx_, tx_, event_;
  FakeIrq irq_;
  std::vector<std::string> errors_;
  std::string dir_, uds_;
  VsockDevice* device_ = nullptr;
  std::unique_ptr<MmioTransport> transport_;
  std::map<uint16_t, uint64_t> rx_buffers_;
  uint16_t rx_seen_ = 0;
  uint32_t host_port_ = 0;
};

TEST_F(VsockTest, ConfigSpaceAndCreateValidation) {
  uint64_t cid = 0;
  transport_->Read(kRegConfig, std::span(reinterpret_cast<uint8_t*>(&cid), 8));
  EXPECT_EQ(cid, kGuestCid);
  EXPECT_EQ(Get(kRegDeviceId), kDeviceIdVsock);
  EXPECT_TRUE(std::filesystem::exists(uds_));
  auto reserved = VsockDevice::Create(VsockConfig{.guest_cid = 2, .uds_path = dir_ + "/x"});
  ASSERT_FALSE(reserved);
  EXPECT_NE(reserved.error().message.find("guest_cid 2"), std::string::npos);
  auto taken = VsockDevice::Create(VsockConfig{.guest_cid = 3, .uds_path = uds_});
  ASSERT_FALSE(taken);
  EXPECT_NE(taken.error().message.find(uds_), std::string::npos);
  auto too_long =
      VsockDevice::Create(VsockConfig{.guest_cid = 3, .uds_path = dir_ + std::string(120, 'a')});
  EXPECT_FALSE(too_long);
}

TEST_F(VsockTest, HostInitiatedConnectDataBothWaysAndClose) {
  AddRxBuffers(16);
  UniqueFd client = Connect(uds_);
  ASSERT_TRUE(client.Valid());
  WriteAll(client.Get(), "CONNECT 52\n");
  std::optional<Packet> request = NextRx();
  ASSERT_TRUE(request);
  EXPECT_EQ(request->header.op, kVsockOpRequest);
  EXPECT_EQ(request->header.src_cid, kVsockHostCid);
  EXPECT_EQ(request->header.dst_cid, kGuestCid);
  EXPECT_EQ(request->header.dst_port, 52u);
  EXPECT_EQ(request->header.src_port, VsockDevice::kFirstHostPort);  // Firecracker's first
  EXPECT_EQ(request->header.type, kVsockTypeStream);
  EXPECT_EQ(request->header.buf_alloc, VsockDevice::kConnBufferSize);
  // The guest accepts: the client gets Firecracker's acknowledgement, then bytes flow.
  Send(FromGuest(kVsockOpResponse, 52, request->header.src_port));
  EXPECT_EQ(ReadFor(client.Get(), 14), "OK 1073741824\n");
  WriteAll(client.Get(), "hello");
  std::optional<Packet> data = NextRx();
  ASSERT_TRUE(data);
  EXPECT_EQ(data->header.op, kVsockOpRw);
  EXPECT_EQ(std::string(data->payload.begin(), data->payload.end()), "hello");
  Send(FromGuest(kVsockOpRw, 52, VsockDevice::kFirstHostPort, 5), "world");
  EXPECT_EQ(ReadFor(client.Get(), 5), "world");
  // The host closes: the guest is asked to shut down, answers RST, the connection is gone.
  client.Reset();
  std::optional<Packet> shutdown = NextRx();
  ASSERT_TRUE(shutdown);
  EXPECT_EQ(shutdown->header.op, kVsockOpShutdown);
  EXPECT_EQ(shutdown->header.flags, kVsockShutdownRcv | kVsockShutdownSend);
  Send(FromGuest(kVsockOpRst, 52, VsockDevice::kFirstHostPort));
  EXPECT_EQ(device_->ConnectionCount(), 0u);
  EXPECT_TRUE(errors_.empty());
}

// A paused VM holds its transports: host data that arrives meanwhile stays out of guest
// memory (a snapshot sees a still ring) and is delivered on release.
TEST_F(VsockTest, HeldTransportDeliversHostDataOnlyAfterRelease) {
  AddRxBuffers(8);
  UniqueFd client = OpenHostConnection();
  const uint16_t used_before = rx_->UsedIdx().value();
  transport_->HoldHostNotifications();
  WriteAll(client.Get(), "while paused");
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(200)));
  EXPECT_EQ(rx_->UsedIdx().value(), used_before);
  transport_->ReleaseHostNotifications();
  std::optional<Packet> data = NextRx();
  ASSERT_TRUE(data);
  EXPECT_EQ(data->header.op, kVsockOpRw);
  EXPECT_EQ(std::string(data->payload.begin(), data->payload.end()), "while paused");
  EXPECT_TRUE(errors_.empty());
}

TEST_F(VsockTest, GuestShutdownResetsAndClosesTheClient) {
  AddRxBuffers(8);
  UniqueFd client = OpenHostConnection();
  Send(FromGuest(kVsockOpShutdown, 52, host_port_));
  // Only half closed: nothing yet. Both directions: RST, and the host socket closes.
  VsockHeader both = FromGuest(kVsockOpShutdown, 52, host_port_);
  both.flags = kVsockShutdownRcv | kVsockShutdownSend;
  Send(both);
  std::optional<Packet> rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->header.op, kVsockOpRst);
  EXPECT_TRUE(SeesClose(client.Get()));
  EXPECT_EQ(device_->ConnectionCount(), 0u);
}

TEST_F(VsockTest, GuestRstOfARequestClosesTheClient) {
  AddRxBuffers(4);
  UniqueFd client = Connect(uds_);
  WriteAll(client.Get(), "connect 7\n");  // any case, as Firecracker
  std::optional<Packet> request = NextRx();
  ASSERT_TRUE(request);
  ASSERT_EQ(request->header.op, kVsockOpRequest);
  EXPECT_EQ(request->header.dst_port, 7u);
  Send(FromGuest(kVsockOpRst, 7, request->header.src_port));  // nobody listens in the guest
  EXPECT_TRUE(SeesClose(client.Get()));
  EXPECT_EQ(device_->ConnectionCount(), 0u);
}

TEST_F(VsockTest, BadConnectLineClosesTheClient) {
  AddRxBuffers(4);
  for (std::string line : std::vector<std::string>{"HELLO 52\n", "CONNECT x\n",
                                                   "CONNECT 99999999999\n", std::string(40, 'C')}) {
    UniqueFd client = Connect(uds_);
    WriteAll(client.Get(), line);
    EXPECT_TRUE(SeesClose(client.Get())) << line;
  }
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(100)));
  EXPECT_EQ(device_->ConnectionCount(), 0u);
}

TEST_F(VsockTest, GuestInitiatedConnectAndData) {
  AddRxBuffers(8);
  UniqueFd listener = Listen(uds_ + "_52");
  ASSERT_TRUE(listener.Valid());
  Send(FromGuest(kVsockOpRequest, 1234, 52));
  std::optional<Packet> response = NextRx();
  ASSERT_TRUE(response);
  EXPECT_EQ(response->header.op, kVsockOpResponse);
  EXPECT_EQ(response->header.src_port, 52u);
  EXPECT_EQ(response->header.dst_port, 1234u);
  UniqueFd host(::accept(listener.Get(), nullptr, nullptr));
  ASSERT_TRUE(host.Valid());
  Send(FromGuest(kVsockOpRw, 1234, 52, 4), "ping");
  EXPECT_EQ(ReadFor(host.Get(), 4), "ping");
  WriteAll(host.Get(), "pong");
  std::optional<Packet> data = NextRx();
  ASSERT_TRUE(data);
  EXPECT_EQ(data->header.op, kVsockOpRw);
  EXPECT_EQ(data->header.fwd_cnt, 4u);  // the guest's 4 bytes reached the host
  EXPECT_EQ(std::string(data->payload.begin(), data->payload.end()), "pong");
}

TEST_F(VsockTest, ConnectionRefusedGetsRst) {
  AddRxBuffers(4);
  Send(FromGuest(kVsockOpRequest, 1234, 99));  // nothing listens at <uds>_99
  std::optional<Packet> rst = NextRx();
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->header.op, kVsockOpRst);
  EXPECT_EQ(rst->header.src_port, 99u);
  EXPECT_EQ(rst->header.dst_port, 1234u);
  EXPECT_EQ(rst->header.dst_cid, kGuestCid);
  EXPECT_EQ(device_->ConnectionCount(), 0u);
}

TEST_F(VsockTest, CreditFlowControl) {
  AddRxBuffers(32);
  UniqueFd listener = Listen(uds_ + "_52");
  Send(FromGuest(kVsockOpRequest, 1234, 52, 0, /*buf_alloc=*/100));
  ASSERT_EQ(NextRx()->header.op, kVsockOpResponse);
  UniqueFd host(::accept(listener.Get(), nullptr, nullptr));
  WriteAll(host.Get(), std::string(300, 'x'));
  // The guest's 100 bytes of credit, then the device asks for more and stops.
  uint32_t received = 0;
  std::optional<Packet> packet;
  while ((packet = NextRx()) && packet->header.op == kVsockOpRw) received += packet->header.len;
  ASSERT_TRUE(packet);
  EXPECT_EQ(received, 100u);
  EXPECT_EQ(packet->header.op, kVsockOpCreditRequest);
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(200)));
  // The guest consumed 100: another 100 flow, and no more.
  Send(FromGuest(kVsockOpCreditUpdate, 1234, 52, 0, 100, 100));
  received = 0;
  while ((packet = NextRx()) && packet->header.op == kVsockOpRw) received += packet->header.len;
  EXPECT_EQ(received, 100u);
  // A bigger buffer lets the rest through.
  Send(FromGuest(kVsockOpCreditUpdate, 1234, 52, 0, 4096, 200));
  received = 0;
  while (received < 100 && (packet = NextRx()) && packet->header.op == kVsockOpRw) {
    received += packet->header.len;
  }
  EXPECT_EQ(received, 100u);
}

TEST_F(VsockTest, MalformedPacketsAreDroppedOrReset) {
  AddRxBuffers(16);
  const VsockStats before = device_->stats();
  // Shorter than a header.
  const uint64_t stub = tx_->Alloc(20);
  const Segment short_chain[] = {{stub, 20, false}};
  ASSERT_TRUE(tx_->AddChain(short_chain));
  Set(kRegQueueNotify, VsockDevice::kTxQueue);
  // Only a writable buffer.
  const Segment writable_chain[] = {{tx_->Alloc(64), 64, true}};
  ASSERT_TRUE(tx_->AddChain(writable_chain));
  Set(kRegQueueNotify, VsockDevice::kTxQueue);
  // len beyond the descriptor, past the largest packet, wrong source or destination CID.
  Send(FromGuest(kVsockOpRw, 1, 2, 100), "abc");
  Send(FromGuest(kVsockOpRw, 1, 2, 1u << 31));
  VsockHeader spoofed = FromGuest(kVsockOpRequest, 1, 2);
  spoofed.src_cid = 7;
  Send(spoofed);
  VsockHeader elsewhere = FromGuest(kVsockOpRequest, 1, 2);
  elsewhere.dst_cid = 4;
  Send(elsewhere);
  EXPECT_EQ(device_->stats().dropped_packets - before.dropped_packets, 6u);
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(100)));
  // Unknown type, unknown op, data or shutdown for no connection: RST. RST for none: nothing.
  VsockHeader seqpacket = FromGuest(kVsockOpRequest, 10, 20);
  seqpacket.type = 2;
  Send(seqpacket);
  Send(FromGuest(99, 11, 21));
  Send(FromGuest(kVsockOpRw, 12, 22, 1), "z");
  Send(FromGuest(kVsockOpRst, 13, 23));
  for (uint32_t port : {10u, 11u, 12u}) {
    std::optional<Packet> rst = NextRx();
    ASSERT_TRUE(rst);
    EXPECT_EQ(rst->header.op, kVsockOpRst);
    EXPECT_EQ(rst->header.dst_port, port);
    EXPECT_EQ(rst->header.src_port, port + 10);
  }
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(100)));
  EXPECT_TRUE(errors_.empty());  // bad packets are not a transport error
  // An unknown op on a live connection resets it.
  UniqueFd client = OpenHostConnection();
  Send(FromGuest(0, 52, host_port_));
  EXPECT_EQ(NextRx()->header.op, kVsockOpRst);
  EXPECT_TRUE(SeesClose(client.Get()));
}

TEST_F(VsockTest, RxBufferWithoutRoomForAHeaderIsAProtocolError) {
  UniqueFd listener = Listen(uds_ + "_52");
  Send(FromGuest(kVsockOpRequest, 1234, 52));
  // The event thread connects (the listener turns readable) and queues the RESPONSE in the
  // same critical section, so the next rx notification finds it.
  pollfd connected{listener.Get(), POLLIN, 0};
  ASSERT_EQ(::poll(&connected, 1, 5000), 1);
  const Segment tiny[] = {{rx_->Alloc(16), 16, true}};
  ASSERT_TRUE(rx_->AddChain(tiny));
  Set(kRegQueueNotify, VsockDevice::kRxQueue);
  ASSERT_EQ(errors_.size(), 1u);
  EXPECT_NE(errors_[0].find("44 bytes"), std::string::npos);
  EXPECT_TRUE(Get(kRegStatus) & kStatusNeedsReset);
}

TEST_F(VsockTest, HeaderOnlyRxBuffersWaitForRoomForData) {
  UniqueFd listener = Listen(uds_ + "_52");
  AddRxBuffers(1);
  Send(FromGuest(kVsockOpRequest, 1234, 52));
  ASSERT_EQ(NextRx()->header.op, kVsockOpResponse);
  UniqueFd host(::accept(listener.Get(), nullptr, nullptr));
  AddRxBuffers(1, 44);  // room for control packets only
  WriteAll(host.Get(), "data");
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(200)));
  AddRxBuffers(1);  // the 44-byte buffer is still first in line: still nothing
  EXPECT_FALSE(NextRx(std::chrono::milliseconds(100)));
  EXPECT_EQ(device_->ConnectionCount(), 1u);
  EXPECT_TRUE(errors_.empty());
}

TEST_F(VsockTest, FloodIsCappedAndResets) {
  AddRxBuffers(8);
  UniqueFd listener = Listen(uds_ + "_52");
  Send(FromGuest(kVsockOpRequest, 1234, 52));
  ASSERT_EQ(NextRx()->header.op, kVsockOpResponse);
  UniqueFd host(::accept(listener.Get(), nullptr, nullptr));  // and never reads
  // The guest ignores its credit and sends 4 MiB in 64 KiB packets.
  const uint32_t chunk = VsockDevice::kMaxPacketPayload;
  const VsockHeader header = FromGuest(kVsockOpRw, 1234, 52, chunk);
  const uint64_t packet = tx_->Alloc(44 + chunk, 'f');
  ASSERT_TRUE(tx_->WriteBytes(packet, std::span(reinterpret_cast<const uint8_t*>(&header), 44)));
  size_t most_buffered = 0;
  for (int i = 0; i < 64; ++i) {
    const Segment chain[] = {{packet, 44 + chunk, false}};
    ASSERT_TRUE(tx_->AddChain(chain));
    Set(kRegQueueNotify, VsockDevice::kTxQueue);
    most_buffered = std::max(most_buffered, device_->BufferedBytes());
  }
  EXPECT_LE(most_buffered, VsockDevice::kConnBufferSize);
  EXPECT_EQ(device_->stats().flood_resets, 1u);
  // Credit updates for what the host socket took may come first; then the RST.
  std::optional<Packet> rst;
  while ((rst = NextRx()) && rst->header.op == kVsockOpCreditUpdate) {
  }
  ASSERT_TRUE(rst);
  EXPECT_EQ(rst->header.op, kVsockOpRst);
  EXPECT_EQ(device_->BufferedBytes(), 0u);
  EXPECT_EQ(device_->ConnectionCount(), 0u);
  EXPECT_TRUE(errors_.empty());
}

TEST_F(VsockTest, ResetDropsConnections) {
  AddRxBuffers(4);
  UniqueFd client = OpenHostConnection();
  ASSERT_EQ(device_->ConnectionCount(), 1u);
  Set(kRegStatus, 0);
  EXPECT_EQ(device_->ConnectionCount(), 0u);
  EXPECT_TRUE(SeesClose(client.Get()));
}

// After a snapshot restore the guest is told its connections are gone: one 4-byte
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET in the first event buffer, sent once.
TEST_F(VsockTest, TransportResetIsSentOnTheEventQueueOnce) {
  Set(kRegQueueNotify, VsockDevice::kEventQueue);
  EXPECT_EQ(event_->UsedIdx().value(), 0);  // nothing pending, buffers or not
  device_->RequestTransportReset();
  transport_->NotifyFromHost(VsockDevice::kEventQueue);
  EXPECT_EQ(event_->UsedIdx().value(), 0);  // no buffer yet: stays pending
  const uint64_t first = event_->Alloc(8, 0xee);
  const uint64_t second = event_->Alloc(8, 0xee);
  const Segment chain_one[] = {{first, 8, true}};
  const Segment chain_two[] = {{second, 8, true}};
  ASSERT_TRUE(event_->AddChain(chain_one));
  ASSERT_TRUE(event_->AddChain(chain_two));
  Set(kRegQueueNotify, VsockDevice::kEventQueue);
  ASSERT_EQ(event_->UsedIdx().value(), 1);
  EXPECT_EQ(event_->Used(0)->len, 4u);
  EXPECT_EQ(event_->ReadBytes(first, 5).value(), (std::vector<uint8_t>{0, 0, 0, 0, 0xee}));
  Set(kRegQueueNotify, VsockDevice::kEventQueue);
  EXPECT_EQ(event_->UsedIdx().value(), 1);  // the second buffer is kept for the next one
  EXPECT_TRUE(errors_.empty());
}

}  // namespace
}  // namespace tartarus::vmm::virtio
