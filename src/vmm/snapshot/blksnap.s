# Persephone (tartarus-vmm snapshots) test guest "blksnap": a virtio-blk write that must
# survive a snapshot. Initializes the virtio-blk in slot 0 (polling only, no interrupts),
# writes "PERSEPHONE" to sector 1, prints "written, waiting", spins for 2^34 TSC cycles (the
# test pauses and snapshots it meanwhile), then reads sector 1 into a cleared buffer, prints
# "read back <what it read>" and halts. Restored on a Lethe drive whose base never held the
# word, the read can only be served from the saved overlay.
        .code64
        .text
        .globl _start
        .set SLOT0, 0xd0001000
        .set BLK_QUEUE, 0x200000        # descriptors; avail ring +0x1000; used ring +0x2000
        .set BLK_HEADER, 0x203000
        .set BLK_DATA, 0x204000
        .set BLK_STATUS, 0x205000
        .set QUEUE_SIZE, 8
        .set WAIT_CYCLES_LOG2, 34
_start:
        mov $SLOT0, %ebx
        cmpl $0x74726976, (%rbx)        # MagicValue "virt"
        jne no_device
        cmpl $2, 8(%rbx)                # DeviceID 2: block
        jne no_device
        mov $BLK_QUEUE, %r12d
        mov $1, %ecx
        call virtio_init
        movw $1, BLK_QUEUE+0x1000       # avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT

        lea word(%rip), %rsi            # the word, NUL-terminated, into the data buffer
        mov $BLK_DATA, %edi
        mov $16, %ecx
        rep movsb
        mov $1, %edi                    # VIRTIO_BLK_T_OUT
        mov $1, %esi
        call blk_request
        cmpb $0, BLK_STATUS
        jne io_error
        lea waiting(%rip), %rsi
        call puts

        rdtsc                           # spin: the snapshot is taken in here
        shl $32, %rdx
        or %rax, %rdx
        mov %rdx, %r13
1:      rdtsc
        shl $32, %rdx
        or %rax, %rdx
        sub %r13, %rdx
        shr $WAIT_CYCLES_LOG2, %rdx
        jz 1b

        mov $BLK_DATA, %edi             # clear the buffer, then read sector 1 back
        xor %eax, %eax
        mov $512, %ecx
        rep stosb
        xor %edi, %edi                  # VIRTIO_BLK_T_IN
        mov $1, %esi
        call blk_request
        cmpb $0, BLK_STATUS
        jne io_error
        movb $0, BLK_DATA+15
        lea read_back(%rip), %rsi
        call puts
        mov $BLK_DATA, %esi
        call puts
        lea newline_text(%rip), %rsi
        call puts
        jmp halt_forever
io_error:
        lea failed(%rip), %rsi
        call puts
        jmp halt_forever
no_device:
        lea missing(%rip), %rsi
        call puts
        jmp halt_forever

# EDI: request type, ESI: sector. Header, 512 data bytes, status byte; data device-writable
# for reads. Publishes descriptor 0 and polls the used ring.
blk_request:
        mov %edi, BLK_HEADER
        movl $0, BLK_HEADER+4
        mov %rsi, BLK_HEADER+8
        movb $0xff, BLK_STATUS
        movq $BLK_HEADER, BLK_QUEUE
        movl $16, BLK_QUEUE+8
        movw $1, BLK_QUEUE+12           # NEXT
        movw $1, BLK_QUEUE+14
        movq $BLK_DATA, BLK_QUEUE+16
        movl $512, BLK_QUEUE+24
        mov $3, %eax                    # NEXT | WRITE for IN
        test %edi, %edi
        jz 1f
        mov $1, %eax                    # NEXT for OUT
1:      mov %ax, BLK_QUEUE+28
        movw $2, BLK_QUEUE+30
        movq $BLK_STATUS, BLK_QUEUE+32
        movl $1, BLK_QUEUE+40
        movw $2, BLK_QUEUE+44           # WRITE
        movw $0, BLK_QUEUE+46
        movzwl 0x1002(%r12), %eax       # avail.idx
        mov %eax, %ecx
        and $(QUEUE_SIZE - 1), %ecx
        movw $0, 0x1004(%r12,%rcx,2)    # avail.ring[idx % size] = head 0
        inc %eax
        mfence
        mov %ax, 0x1002(%r12)
        mfence
        movl $0, 0x50(%rbx)             # QueueNotify 0
2:      cmp %ax, 0x2002(%r12)           # used.idx caught up
        jne 2b
        ret

        .include "serial.inc"
        .include "virtio_driver.inc"

        .section .rodata
word:         .asciz "PERSEPHONE\0\0\0\0\0"
waiting:      .asciz "written, waiting\n"
read_back:    .asciz "read back "
newline_text: .asciz "\n"
failed:       .asciz "blk request failed\n"
missing:      .asciz "no virtio-blk in slot 0\n"
