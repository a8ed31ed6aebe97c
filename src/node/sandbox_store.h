// Hecatoncheir (the node agent), local mode: the sandbox records of this host, one
// directory per sandbox under <state_dir>/sandboxes/<id>/:
//   record.json   the SandboxRecord (atomic rewrite)
//   stdout.log    the main command's output, capped (see kMaxLogBytes)
//   stderr.log
//   control.sock  the supervisor's socket while the sandbox runs (guest protocol)
// and an index of the records that are not final yet, so that reconciling (on every CLI
// command) reads those and not every record the host ever kept:
//   .active/<id>      a symlink to ../<id>, from Create until the record is final
//   .active/.indexed  present once every older record is in the index
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "node/sandbox_record.h"

namespace tartarus::node {

// Each log keeps at most this much of a command's output; `logs` says when it was cut.
inline constexpr uint64_t kMaxLogBytes = 64ull << 20;

class SandboxStore {
 public:
  explicit SandboxStore(std::string state_dir);

  const std::string& state_dir() const { return state_dir_; }
  std::string Dir(const std::string& id) const;
  std::string ControlSocket(const std::string& id) const { return Dir(id) + "/control.sock"; }
  std::string StdoutLog(const std::string& id) const { return Dir(id) + "/stdout.log"; }
  std::string StderrLog(const std::string& id) const { return Dir(id) + "/stderr.log"; }

  // Creates the sandbox's directory and first record; fails if the id exists.
  Status Create(const SandboxRecord& record);
  // Replaces the record atomically (readers see the old one or the new one). A final
  // state takes the sandbox out of the active index.
  Status Save(const SandboxRecord& record);
  // An empty record.json (a crash before the data reached the disk) loads as a lost
  // sandbox, so that `ps` shows it and `rm` can remove it.
  Result<SandboxRecord> Load(const std::string& id) const;
  // Every record, newest first. Unreadable records are skipped.
  std::vector<SandboxRecord> List() const;
  // The records that are not final (creating, running): the active index, read in one
  // readdir. Stale index entries (a record saved final by a process killed before it
  // could unlink the entry) are dropped here.
  std::vector<SandboxRecord> ListActive();
  // A full id or a unique prefix of one -> the full id.
  Result<std::string> Resolve(std::string_view id_or_prefix) const;
  Status Remove(const std::string& id);

 private:
  std::string ActiveDir() const { return state_dir_ + "/sandboxes/.active"; }
  // Builds the index from every record, once per state dir (records written before it
  // existed).
  void IndexOlderRecords();

  std::string state_dir_;
};

}  // namespace tartarus::node
