// Templates as ext4 images (part of the template system): a microVM cannot share the host's
// directory tree, so the microvm backend boots the template's rootfs as a read-only ext4
// image, `<template dir>/rootfs.ext4`, made once with `mkfs.ext4 -d` (no loop device, no
// mount, no root needed). A template rebuild replaces the whole template directory, image
// included, so a cached image always belongs to the tree beside it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace tartarus::templates {

// "<rootfs>.ext4": for /var/lib/tartarus/templates/base/rootfs, .../base/rootfs.ext4.
std::string Ext4ImagePath(const std::string& rootfs);

// What a tree holds, counted without following symlinks or crossing mounts.
struct TreeSize {
  uint64_t bytes = 0;    // allocated bytes (hard links counted each time: an upper bound)
  uint64_t entries = 0;  // files, directories, links, devices
};
Result<TreeSize> MeasureTree(const std::string& root);

// The image's size and inode count for a tree: a quarter more than it holds plus room for
// ext4's own metadata, in whole MiB.
struct Ext4Geometry {
  uint64_t bytes = 0;
  uint64_t inodes = 0;
};
Ext4Geometry Ext4GeometryFor(const TreeSize& tree);

// The mkfs.ext4 command that writes `image` (created) from `tree`: no journal (the image is
// only ever read), no reserved blocks, root-owned root directory.
std::vector<std::string> MkfsExt4Command(const std::string& mkfs, const std::string& tree,
                                         const std::string& image, const Ext4Geometry& geometry);

// Returns Ext4ImagePath(rootfs), building it first when missing (into a temporary name,
// renamed into place, so a killed build leaves no half image). `progress` gets one line
// when it builds. Needs mkfs.ext4 from e2fsprogs.
Result<std::string> EnsureExt4Image(const std::string& rootfs,
                                    const std::function<void(std::string_view)>& progress = {});

}  // namespace tartarus::templates
