# tartarus-vmm test guest "vsock": drives virtio-vsock as Linux's driver would, by polling.
# Finds the device in slots 0-7 (DeviceID 19), sets up rx, tx and event queues, gives rx four
# 4 KiB buffers, then opens a stream from port 1234 to host port 52 (Firecracker's hybrid
# vsock connects it to "<uds_path>_52"): REQUEST, wait for RESPONSE, RW "ping", wait for the
# host's RW (printed), SHUTDOWN both ways, wait for the RST that ends the connection. Every
# packet received is printed as "vsock: rx op=OO len=LLLLLLLLLLLLLLLL".
        .code64
        .text
        .globl _start
        .set SLOT0, 0xd0001000
        .set SLOTS, 8
        .set DEVICE_ID_VSOCK, 19
        .set RX_QUEUE, 0x200000         # descriptors; avail ring +0x1000; used ring +0x2000
        .set TX_QUEUE, 0x210000
        .set EVENT_QUEUE, 0x220000
        .set RX_BUFFERS, 0x230000       # 4 x 4 KiB, descriptor i at RX_BUFFERS + i * 0x1000
        .set TX_PACKET, 0x240000        # header (44 bytes) then payload, one descriptor
        .set QUEUE_SIZE, 8
        .set RX_BUFFER_COUNT, 4
        .set GUEST_PORT, 1234
        .set HOST_PORT, 52
        .set OP_REQUEST, 1
        .set OP_RESPONSE, 2
        .set OP_RST, 3
        .set OP_SHUTDOWN, 4
        .set OP_RW, 5
_start:
        mov $SLOT0, %ebx
        mov $SLOTS, %ecx
1:      cmpl $0x74726976, (%rbx)        # MagicValue "virt"
        jne 2f
        cmpl $DEVICE_ID_VSOCK, 8(%rbx)
        je found_device
2:      add $0x1000, %ebx
        dec %ecx
        jnz 1b
        lea missing(%rip), %rsi
        call puts
        jmp halt_forever

found_device:
        mov $RX_QUEUE, %r12d             # rx, tx and event queues, 0x10000 apart
        mov $3, %ecx
        call virtio_init
        lea found(%rip), %rsi
        call puts
        mov 0x100(%rbx), %rax           # config: guest_cid (le64)
        mov %rax, guest_cid(%rip)
        call puthex64
        call newline

        # rx: four device-writable buffers, published at once.
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $4, %eax                    # descriptor i at RX_QUEUE + 16 * i
        mov %ecx, %edx
        shl $12, %edx
        add $RX_BUFFERS, %edx
        mov %rdx, RX_QUEUE(%rax)
        movl $0x1000, RX_QUEUE+8(%rax)
        movw $2, RX_QUEUE+12(%rax)      # VIRTQ_DESC_F_WRITE
        mov %cx, RX_QUEUE+0x1004(,%rcx,2)  # avail.ring[i] = i
        inc %ecx
        cmp $RX_BUFFER_COUNT, %ecx
        jne 1b
        mfence
        movw $RX_BUFFER_COUNT, RX_QUEUE+0x1002  # avail.idx
        mfence
        movl $0, 0x50(%rbx)             # QueueNotify: rx

        mov $OP_REQUEST, %edi
        xor %esi, %esi
        xor %edx, %edx
        call send_packet
        mov $OP_RESPONSE, %edi
        call receive_until
        lea connected(%rip), %rsi
        call puts

        movl $0x676e6970, TX_PACKET+44  # "ping"
        mov $OP_RW, %edi
        mov $4, %esi
        xor %edx, %edx
        call send_packet
        mov $OP_RW, %edi
        call receive_until              # RSI: the packet's buffer
        lea host_said(%rip), %rsi
        call puts
        mov last_packet(%rip), %rsi
        add $44, %rsi
        call puts                       # the payload, NUL-terminated by receive_until
        call newline

        mov $OP_SHUTDOWN, %edi
        xor %esi, %esi
        mov $3, %edx                    # VIRTIO_VSOCK_SHUTDOWN_RCV | _SEND
        call send_packet
        mov $OP_RST, %edi
        call receive_until
        lea closed(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever

# EDI: op, ESI: payload length (the payload is at TX_PACKET + 44), EDX: flags. Sends one
# packet from GUEST_PORT to the host's HOST_PORT and waits until the device used it.
send_packet:
        mov guest_cid(%rip), %rax
        mov %rax, TX_PACKET             # src_cid
        movq $2, TX_PACKET+8            # dst_cid: the host
        movl $GUEST_PORT, TX_PACKET+16
        movl $HOST_PORT, TX_PACKET+20
        mov %esi, TX_PACKET+24          # len
        movw $1, TX_PACKET+28           # type: stream
        mov %di, TX_PACKET+30           # op
        mov %edx, TX_PACKET+32          # flags
        movl $0x10000, TX_PACKET+36     # buf_alloc: 64 KiB
        mov forwarded(%rip), %eax
        mov %eax, TX_PACKET+40          # fwd_cnt: what we consumed
        movq $TX_PACKET, TX_QUEUE       # descriptor 0: header and payload, device-readable
        lea 44(%rsi), %eax
        mov %eax, TX_QUEUE+8
        movw $0, TX_QUEUE+12
        movzwl TX_QUEUE+0x1002, %eax    # avail.idx
        mov %eax, %ecx
        and $(QUEUE_SIZE - 1), %ecx
        movw $0, TX_QUEUE+0x1004(,%rcx,2)
        inc %eax
        mfence                          # the ring entry before the index
        mov %ax, TX_QUEUE+0x1002
        mfence
        movl $1, 0x50(%rbx)             # QueueNotify: tx
1:      cmp %ax, TX_QUEUE+0x2002        # used.idx
        jne 1b
        ret

# EDI: the op to wait for. Takes rx packets in order, printing each and giving its buffer
# back; RST while waiting for something else is a failure. The wanted packet's buffer address
# is left in last_packet, its payload NUL-terminated.
receive_until:
1:      movzwl RX_QUEUE+0x2002, %eax    # used.idx
        cmp rx_seen(%rip), %ax
        je 1b
        movzwl rx_seen(%rip), %ecx
        and $(QUEUE_SIZE - 1), %ecx
        mov RX_QUEUE+0x2004(,%rcx,8), %ecx  # used.ring[..].id: the descriptor
        incw rx_seen(%rip)
        mov %ecx, %edx
        shl $12, %edx
        add $RX_BUFFERS, %edx           # its buffer
        mov %rdx, last_packet(%rip)
        mov 24(%rdx), %r8d              # len
        movzwl 30(%rdx), %r9d           # op
        movb $0, 44(%rdx,%r8)           # NUL after the payload (len < 4096 - 44: the device's)
        add %r8d, forwarded(%rip)
        lea received(%rip), %rsi
        call puts
        mov %r9d, %eax
        call puthex8
        lea length(%rip), %rsi
        call puts
        mov %r8, %rax
        call puthex64
        call newline
        # The buffer goes back to the device (the payload stays readable until it is reused).
        movzwl RX_QUEUE+0x1002, %eax
        mov %eax, %esi
        and $(QUEUE_SIZE - 1), %esi
        mov %cx, RX_QUEUE+0x1004(,%rsi,2)
        inc %eax
        mfence
        mov %ax, RX_QUEUE+0x1002
        mfence
        movl $0, 0x50(%rbx)
        cmp %edi, %r9d
        je 2f
        cmp $OP_RST, %r9d
        jne 1b
        lea reset(%rip), %rsi
        call puts
        jmp halt_forever
2:      ret

newline:
        push %rsi
        lea newline_text(%rip), %rsi
        call puts
        pop %rsi
        ret

        .include "serial.inc"
        .include "virtio_driver.inc"

        .section .rodata
found:        .asciz "vsock: found, guest_cid="
connected:    .asciz "vsock: connected\n"
host_said:    .asciz "vsock: host said "
closed:       .asciz "vsock guest done\n"
received:     .asciz "vsock: rx op="
length:       .asciz " len="
missing:      .asciz "FAIL: no virtio-vsock in slots 0-7\n"
reset:        .asciz "FAIL: connection reset\n"
newline_text: .asciz "\n"

        .data
        .balign 8
guest_cid:   .quad 0
last_packet: .quad 0
forwarded:   .long 0
rx_seen:     .word 0
