// Writes the seed corpus for frame_decoder_fuzz: one valid frame of every message type,
// plus a stream of several frames. Run: make_seeds <dir>. The output is checked in under
// fuzz/corpus/frame_decoder/.
#include <cstdio>
#include <string>
#include <vector>

#include "protocol/codec.h"

using namespace tartarus::protocol;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  std::vector<Frame> frames = {
      {0, Hello{1, 1}},
      {1, ExecStart{{"sh", "-c", "echo hi"}, {"PATH=/bin"}, "/tmp", "1000:1000", true, 5000}},
      {1, StdinData{"input"}},
      {1, StdinClose{}},
      {1, Signal{15}},
      {2, FileWriteOpen{"/tmp/f", 0644, true}},
      {2, FileWriteData{"data"}},
      {2, FileWriteClose{}},
      {3, FileRead{"/etc/passwd"}},
      {4, Stat{"/"}},
      {5, List{"/tmp"}},
      {6, Mkdir{"/a/b", 0755, true}},
      {7, Remove{"/a", true}},
      {0, Shutdown{}},
      {0, Ready{1, "0.1.0"}},
      {1, ExecStarted{42}},
      {1, Output{Stream::kStderr, "err\n"}},
      {1, ExecExit{0, 9, true}},
      {1, StdinAck{5}},
      {3, FileData{"root:x:0:0"}},
      {3, FileEnd{}},
      {4, StatResult{FileType::kDirectory, 0755, 4096, 1700000000}},
      {5,
       ListChunk{{{"f", FileType::kRegular, 0644, 1}, {"d", FileType::kDirectory, 0755, 0}}, true}},
      {6, Ok{}},
      {7, ErrorReply{ErrorKind::kNotFound, "stat /x: No such file or directory"}},
  };
  std::string stream;
  for (const Frame& frame : frames) {
    auto bytes = EncodeFrame(frame);
    if (!bytes) return 1;
    stream += *bytes;
    std::string path =
        std::string(argv[1]) + "/" + std::string(MessageTypeName(TypeOf(frame.message)));
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 1;
    std::fwrite(bytes->data(), 1, bytes->size(), f);
    std::fclose(f);
  }
  FILE* f = std::fopen((std::string(argv[1]) + "/stream").c_str(), "wb");
  if (!f) return 1;
  std::fwrite(stream.data(), 1, stream.size(), f);
  std::fclose(f);
  return 0;
}
