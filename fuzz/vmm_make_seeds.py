#!/usr/bin/env python3
# Writes the seed inputs of the tartarus-vmm virtio fuzz targets (fuzz/vmm_*_fuzz.cc) into
# fuzz/vmm_corpus/<target>/: well-formed requests the fuzzer mutates from, in the layout of
# vmm_fuzz_util.h (byte 0: queue size and next index; then guest memory from address 0 with
# descriptors at 0, the available ring at 0x100, the used ring at 0x200).
# Usage: fuzz/vmm_make_seeds.py [output dir, default fuzz/vmm_corpus]
import os
import struct
import sys

NEXT, WRITE, INDIRECT = 1, 2, 4


def queue_input(descs, heads, extra, table=0):
    mem = bytearray(0x1000)
    for i, (addr, length, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", mem, table + 16 * i, addr, length, flags, nxt)
    struct.pack_into("<HH", mem, 0x100, 0, len(heads))
    for i, head in enumerate(heads):
        struct.pack_into("<H", mem, 0x104 + 2 * i, head)
    for addr, data in extra:
        mem[addr:addr + len(data)] = data
    return bytes([4]) + bytes(mem)  # queue size 16, next index 0


def blk(kind, sector, data_len, data_writable):
    header = struct.pack("<IIQ", kind, 0, sector)
    descs = [(0x400, 16, NEXT, 1)]
    if data_len:
        descs.append((0x500, data_len, NEXT | (WRITE if data_writable else 0), 2))
    descs.append((0xf00, 1, WRITE, 0))
    if not data_len:
        descs[0] = (0x400, 16, NEXT, 1)
    return queue_input(descs, [0], [(0x400, header)])


def blk_indirect():
    header = struct.pack("<IIQ", 8, 0, 0)
    table = [(0x400, 16, NEXT, 1), (0x500, 20, NEXT | WRITE, 2), (0xf00, 1, WRITE, 0)]
    packed = b"".join(struct.pack("<QIHH", *d) for d in table)
    return queue_input([(0x600, 48, INDIRECT, 0)], [0], [(0x400, header), (0x600, packed)])


def vsock(op, src_port, dst_port, payload=b"", kind=1):
    # virtio_vsock_hdr from the guest (cid 3) to the host (cid 2), then a writable buffer the
    # rx pass can answer into.
    header = struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, len(payload), kind, op, 0,
                         65536, 0)
    descs = [(0x400, 44 + len(payload), 0, 0), (0x800, 256, WRITE, 0)]
    return queue_input(descs, [0, 1], [(0x400, header + payload)])


def mmio_seed():
    ops = bytearray()

    def op(kind, reg, value):
        ops.extend(struct.pack("<BBI", kind, reg // 4, value))

    write, read = 5, 4
    for status in (1, 3):
        op(write, 0x70, status)
    op(write, 0x24, 1)
    op(write, 0x20, 1)  # VERSION_1
    op(write, 0x70, 11)
    op(write, 0x30, 0)
    op(write, 0x38, 16)
    op(write, 0x80, 0)
    op(write, 0x90, 0x100)
    op(write, 0xa0, 0x200)
    op(write, 0x44, 1)
    op(write, 0x70, 15)
    ring = bytearray(64)
    struct.pack_into("<QIHH", ring, 0, 0x400, 64, WRITE, 0)
    ops.extend(struct.pack("<BBI", 0xff, 0, 0))
    ops.extend(ring)
    avail = bytearray(64)
    struct.pack_into("<HHH", avail, 0, 0, 1, 0)
    ops.extend(struct.pack("<BBI", 0xff, 0, 0x100))
    ops.extend(avail)
    op(write, 0x50, 0)
    op(read, 0x60, 0)
    op(write, 0x64, 1)
    op(read, 0x100, 0)
    return bytes(ops)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "vmm_corpus")
    seeds = {
        "vmm_virtio_blk_fuzz": {
            "in": blk(0, 1, 512, True),
            "out": blk(1, 2, 1024, False),
            "flush": blk(4, 0, 0, False),
            "get_id": blk_indirect(),
        },
        "vmm_virtio_rng_fuzz": {"one": queue_input([(0x400, 64, WRITE, 0)], [0], [])},
        "vmm_virtio_mmio_fuzz": {"init": mmio_seed()},
        "vmm_virtio_vsock_fuzz": {
            "request": vsock(1, 1234, 52),
            "rw": vsock(5, 1234, 52, b"hello"),
            "rst": vsock(3, 1234, 52),
            "credit_request": vsock(7, 1234, 52),
            "seqpacket": vsock(1, 1234, 52, kind=2),
        },
    }
    seeds["vmm_virtqueue_fuzz"] = dict(seeds["vmm_virtio_blk_fuzz"], **seeds["vmm_virtio_rng_fuzz"])
    for target, files in seeds.items():
        os.makedirs(os.path.join(out, target), exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(out, target, name), "wb") as f:
                f.write(data)


if __name__ == "__main__":
    main()
