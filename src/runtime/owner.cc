// The Tartarus runtime: sandbox ownership records.
#include "runtime/owner.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

#include "common/unique_fd.h"

namespace tartarus::runtime {
namespace {

Result<uint64_t> ParseU64(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    return Fail(ErrorCode::kInvalidArgument,
                std::string(what) + ": not a number: \"" + std::string(text) + "\"");
  }
  return value;
}

}  // namespace

Result<uint64_t> ParseProcStatStartTime(std::string_view stat_text) {
  // The comm field ends at the last ')'; fields from there on are space separated.
  size_t close = stat_text.rfind(')');
  if (close == std::string_view::npos) {
    return Fail(ErrorCode::kInvalidArgument, "/proc/<pid>/stat: no comm field");
  }
  std::string_view rest = stat_text.substr(close + 1);
  // After ")" comes field 3 (state); starttime is field 22, i.e. the 20th field here.
  int field = 2;
  size_t pos = 0;
  while (pos < rest.size()) {
    while (pos < rest.size() && rest[pos] == ' ') ++pos;
    size_t end = rest.find_first_of(" \n", pos);
    if (end == std::string_view::npos) end = rest.size();
    if (end == pos) break;
    ++field;
    if (field == 22) return ParseU64(rest.substr(pos, end - pos), "/proc/<pid>/stat starttime");
    pos = end;
  }
  return Fail(ErrorCode::kInvalidArgument, "/proc/<pid>/stat: too few fields");
}

Result<uint64_t> ProcessStartTime(pid_t pid) {
  auto text = TRY(ReadSmallFile("/proc/" + std::to_string(pid) + "/stat"));
  return ParseProcStatStartTime(text);
}

Result<OwnerRecord> CurrentProcessOwner() {
  OwnerRecord owner;
  owner.pid = getpid();
  owner.start_time = TRY(ProcessStartTime(owner.pid));
  return owner;
}

std::string FormatOwnerRecord(const OwnerRecord& owner) {
  return std::to_string(owner.pid) + " " + std::to_string(owner.start_time) + "\n";
}

Result<OwnerRecord> ParseOwnerRecord(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  size_t space = text.find(' ');
  if (space == std::string_view::npos) {
    return Fail(ErrorCode::kInvalidArgument, "owner record: expected \"<pid> <start time>\"");
  }
  uint64_t pid = TRY(ParseU64(text.substr(0, space), "owner pid"));
  uint64_t start = TRY(ParseU64(text.substr(space + 1), "owner start time"));
  if (pid == 0 || pid > 0x3fffffff) {
    return Fail(ErrorCode::kInvalidArgument, "owner record: pid out of range");
  }
  return OwnerRecord{static_cast<pid_t>(pid), start};
}

bool OwnerAlive(const OwnerRecord& owner) {
  auto text = ReadSmallFile("/proc/" + std::to_string(owner.pid) + "/stat");
  if (!text) return false;
  auto start = ParseProcStatStartTime(*text);
  if (!start || *start != owner.start_time) return false;
  // A zombie is dead even if its parent has not reaped it yet (state 'Z', or 'X').
  size_t close = text->rfind(')');
  char state = close + 2 < text->size() ? (*text)[close + 2] : '?';
  return state != 'Z' && state != 'X';
}

Result<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return FailErrno(path);
  std::string text;
  char buffer[4096];
  while (text.size() < max_bytes) {
    ssize_t n = read(fd.Get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("reading " + path);
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  if (text.size() > max_bytes) text.resize(max_bytes);
  return text;
}

Status WriteSmallFile(const std::string& path, std::string_view text) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return FailErrno("creating " + path);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd.Get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return FailErrno("writing " + path);
    done += static_cast<size_t>(n);
  }
  return Ok();
}

}  // namespace tartarus::runtime
