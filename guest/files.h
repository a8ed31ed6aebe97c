// The guest agent (tartarus-agent): filesystem helpers behind the protocol's file
// messages. They return errno values so the agent can map them to ErrorKind.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "protocol/messages.h"

namespace tartarus::guest {

protocol::ErrorKind KindForErrno(int err);
// Error{kind for err, "<what> <path>: <strerror>"}.
protocol::ErrorReply ErrnoReply(std::string_view what, std::string_view path, int err);
protocol::FileType TypeOfMode(mode_t mode);

// Empty when `path` is usable by the file messages (absolute, no NUL); else why not.
std::string CheckPath(std::string_view path);

// mkdir -p of `path` itself (MakeDirs) or only of its parent (MakeParents). 0 or errno.
int MakeDirs(const std::string& path, mode_t mode);
int MakeParents(const std::string& path);

// Removes `path` and, for a directory, everything below it, never following a symlink
// (a symlink is removed, not its target). 0 or errno.
int RemoveTree(const std::string& path);

}  // namespace tartarus::guest
