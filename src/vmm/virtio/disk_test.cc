// tartarus-vmm (Tartarus's KVM microVM monitor): tests for FileDisk and the Lethe
// copy-on-write disk: reads see the base until written, writes never reach the base, the
// overlay leaves nothing behind, and every access is bounds-checked.
#include "vmm/virtio/disk.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace tartarus::vmm::virtio {
namespace {

std::vector<uint8_t> Pattern(size_t size) {
  std::vector<uint8_t> bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<uint8_t>(i * 13 + 1);
  return bytes;
}

class DiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "virtio-disk-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    overlay_dir_ = dir_ + "/vm";
    std::filesystem::create_directory(overlay_dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteFile(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  std::vector<uint8_t> ReadFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
  }
  size_t Entries(const std::string& dir) {
    size_t count = 0;
    for ([[maybe_unused]] auto& entry : std::filesystem::directory_iterator(dir)) ++count;
    return count;
  }

  std::string dir_;
  std::string overlay_dir_;
};

TEST_F(DiskTest, FileDiskReadsWritesAndChecksBounds) {
  const std::string path = WriteFile("disk.img", Pattern(8192));
  auto disk = FileDisk::Open(path, false).value();
  EXPECT_EQ(disk->Size(), 8192u);
  std::vector<uint8_t> out(100);
  ASSERT_TRUE(disk->ReadAt(1000, out));
  EXPECT_EQ(out[0], Pattern(8192)[1000]);
  const std::vector<uint8_t> data(10, 0x77);
  ASSERT_TRUE(disk->WriteAt(8182, data));
  ASSERT_TRUE(disk->Flush());
  EXPECT_EQ(ReadFile(path)[8191], 0x77);
  EXPECT_FALSE(disk->WriteAt(8183, data));
  EXPECT_FALSE(disk->ReadAt(~uint64_t{0} - 5, out));
}

TEST_F(DiskTest, ReadOnlyFileDiskRefusesWrites) {
  const std::string path = WriteFile("disk.img", Pattern(4096));
  auto disk = FileDisk::Open(path, true).value();
  EXPECT_TRUE(disk->ReadOnly());
  const std::vector<uint8_t> data(10, 0x77);
  EXPECT_FALSE(disk->WriteAt(0, data));
  EXPECT_EQ(ReadFile(path), Pattern(4096));
}

TEST_F(DiskTest, OpeningAMissingOrOddFileNamesIt) {
  auto missing = FileDisk::Open(dir_ + "/nope.img", true);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("nope.img"), std::string::npos);
  auto directory = FileDisk::Open(dir_, true);
  EXPECT_FALSE(directory);
  auto lethe = LetheDisk::Create(dir_ + "/nope.img", overlay_dir_);
  ASSERT_FALSE(lethe);
  EXPECT_NE(lethe.error().message.find("nope.img"), std::string::npos);
  const std::string base = WriteFile("base.img", Pattern(4096));
  auto no_dir = LetheDisk::Create(base, dir_ + "/missing-dir");
  ASSERT_FALSE(no_dir);
  EXPECT_NE(no_dir.error().message.find("missing-dir"), std::string::npos);
}

TEST_F(DiskTest, LetheReadsTheBaseUntilWrittenAndNeverWritesIt) {
  const size_t size = 5 * LetheDisk::kBlockSize + 1000;  // a partial last block
  const std::string base = WriteFile("base.img", Pattern(size));
  struct stat before;
  ASSERT_EQ(::stat(base.c_str(), &before), 0);
  auto disk = LetheDisk::Create(base, overlay_dir_).value();
  EXPECT_EQ(disk->Size(), size);
  EXPECT_FALSE(disk->ReadOnly());

  std::vector<uint8_t> image = Pattern(size);  // what the VM should see
  std::vector<uint8_t> out(size);
  ASSERT_TRUE(disk->ReadAt(0, out));
  EXPECT_EQ(out, image);

  // A write inside one block, one across a block boundary, and one in the partial last block.
  struct Write {
    uint64_t offset;
    size_t length;
    uint8_t value;
  };
  for (Write w : {Write{100, 50, 0xa1}, Write{2 * LetheDisk::kBlockSize - 10, 20, 0xb2},
                  Write{size - 10, 10, 0xc3}}) {
    const std::vector<uint8_t> data(w.length, w.value);
    ASSERT_TRUE(disk->WriteAt(w.offset, data));
    std::fill_n(image.begin() + static_cast<ptrdiff_t>(w.offset), w.length, w.value);
  }
  ASSERT_TRUE(disk->Flush());
  ASSERT_TRUE(disk->ReadAt(0, out));
  EXPECT_EQ(out, image);
  // Unaligned reads spanning written and unwritten blocks.
  std::vector<uint8_t> piece(LetheDisk::kBlockSize + 77);
  ASSERT_TRUE(disk->ReadAt(LetheDisk::kBlockSize - 30, piece));
  EXPECT_TRUE(std::equal(piece.begin(), piece.end(),
                         image.begin() + static_cast<ptrdiff_t>(LetheDisk::kBlockSize - 30)));

  // Blocks 0, 1, 2 and 5 were written; 3 and 4 still come from the base.
  EXPECT_EQ(disk->state().written.at(0), 0b100111u);

  // The base file is untouched, bytes and modification time.
  EXPECT_EQ(ReadFile(base), Pattern(size));
  struct stat after;
  ASSERT_EQ(::stat(base.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
}

// Snapshots: the VM's blocks saved to a file and loaded into a fresh disk over the same base.
TEST_F(DiskTest, LetheOverlaySavesAndLoadsIntoAFreshDisk) {
  const size_t size = 5 * LetheDisk::kBlockSize + 1000;
  const std::string base = WriteFile("base.img", Pattern(size));
  auto disk = LetheDisk::Create(base, overlay_dir_).value();
  const std::vector<uint8_t> first(100, 0xaa), last(50, 0xbb);
  ASSERT_TRUE(disk->WriteAt(10, first));
  ASSERT_TRUE(disk->WriteAt(size - 50, last));  // the partial last block
  std::vector<uint8_t> image(size);
  ASSERT_TRUE(disk->ReadAt(0, image));

  const std::string saved = dir_ + "/saved.overlay";
  int fd = ::open(saved.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(disk->SaveOverlay(fd));
  struct stat info {};
  ASSERT_EQ(::fstat(fd, &info), 0);
  EXPECT_EQ(static_cast<size_t>(info.st_size), size);
  const LetheState state = disk->state();

  auto fresh = LetheDisk::Create(base, overlay_dir_).value();
  ASSERT_TRUE(fresh->LoadOverlay(state, fd));
  std::vector<uint8_t> out(size);
  ASSERT_TRUE(fresh->ReadAt(0, out));
  EXPECT_EQ(out, image);
  EXPECT_EQ(fresh->state().written, state.written);
  EXPECT_EQ(ReadFile(base), Pattern(size));

  // A bitmap or file that does not fit this disk is refused.
  LetheState bad = state;
  bad.block_size = 512;
  auto other = LetheDisk::Create(base, overlay_dir_).value();
  EXPECT_FALSE(other->LoadOverlay(bad, fd));
  bad = state;
  bad.written.push_back(0);
  EXPECT_FALSE(other->LoadOverlay(bad, fd));
  bad = state;
  bad.written[0] |= uint64_t{1} << 10;  // block 10 of a 6-block disk
  auto past = other->LoadOverlay(bad, fd);
  ASSERT_FALSE(past);
  EXPECT_NE(past.error().message.find("past the disk's end"), std::string::npos);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  auto short_file = other->LoadOverlay(state, fd);
  ASSERT_FALSE(short_file);
  EXPECT_NE(short_file.error().message.find("saved overlay is 4096 bytes"), std::string::npos);
  ::close(fd);
}

TEST_F(DiskTest, LetheChecksBounds) {
  const std::string base = WriteFile("base.img", Pattern(8192));
  auto disk = LetheDisk::Create(base, overlay_dir_).value();
  std::vector<uint8_t> data(16, 1);
  EXPECT_FALSE(disk->WriteAt(8190, data));
  EXPECT_FALSE(disk->ReadAt(8192, std::span(data).first(1)));
  EXPECT_FALSE(disk->WriteAt(~uint64_t{0} - 4, data));
  EXPECT_TRUE(disk->ReadAt(8192, std::span(data).first(0)));
  EXPECT_EQ(disk->state().written.at(0), 0u);
}

TEST_F(DiskTest, LetheOverlayHasNoNameAndDiesWithTheDisk) {
  const std::string base = WriteFile("base.img", Pattern(1 << 20));
  auto disk = LetheDisk::Create(base, overlay_dir_).value();
  // Nothing named in the VM's directory, even while the disk is in use: a killed VMM leaves
  // nothing behind.
  EXPECT_EQ(Entries(overlay_dir_), 0u);
  const int overlay_fd = disk->overlay_fd();
  struct stat info;
  ASSERT_EQ(::fstat(overlay_fd, &info), 0);
  EXPECT_EQ(info.st_nlink, 0u);
  EXPECT_EQ(static_cast<uint64_t>(info.st_size), uint64_t{1} << 20);
  const std::vector<uint8_t> data(4096, 9);
  ASSERT_TRUE(disk->WriteAt(0, data));
  disk.reset();
  // The overlay's last reference is gone.
  EXPECT_EQ(::fcntl(overlay_fd, F_GETFD), -1);
  EXPECT_EQ(Entries(overlay_dir_), 0u);
  EXPECT_EQ(ReadFile(base), Pattern(1 << 20));
}

}  // namespace
}  // namespace tartarus::vmm::virtio
