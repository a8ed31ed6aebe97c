// tartarus-vmm (Tartarus's KVM microVM monitor): libFuzzer target for the API socket's
// HTTP/1.1 request parser. The input is split in two feeds at its first byte's value, so
// requests arriving in pieces are explored too; every request it yields must be bounded.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "vmm/api/http.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using tartarus::vmm::api::HttpRequestParser;
  if (size == 0) return 0;
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t split = std::min<size_t>(data[0], input.size());
  HttpRequestParser parser;
  for (std::string_view part : {input.substr(0, split), input.substr(split)}) {
    parser.Feed(part);
    for (int i = 0; i < 64; ++i) {
      auto request = parser.Next();
      if (!request) {
        if (parser.error_status() < 400) std::abort();
        break;
      }
      if (!*request) break;
      if ((*request)->body.size() > HttpRequestParser::kMaxBodyBytes) std::abort();
      if ((*request)->path.empty() || (*request)->path[0] != '/') std::abort();
    }
  }
  return 0;
}
