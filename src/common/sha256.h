// A small, dependency-free SHA-256 (FIPS 180-4): template content hashes, token digests.
// Not constant-time: fine for fingerprints and for hashing high-entropy API tokens.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace tartarus {

class Sha256 {
 public:
  Sha256();
  void Update(std::string_view data);
  // Finishes the hash; the object must not be updated afterwards.
  std::array<uint8_t, 32> Finish();
  // Lower-case hex of the finished digest.
  std::string FinishHex();

 private:
  void Block(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace tartarus
