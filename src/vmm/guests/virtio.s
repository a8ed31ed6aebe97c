# tartarus-vmm test guest "virtio": drives virtio-mmio devices as a Linux driver would.
# Slot 0 must be a virtio-blk: init sequence (reset, ACKNOWLEDGE, DRIVER, VERSION_1 only,
# FEATURES_OK, queue 0 of 8 entries, DRIVER_OK), then through the split virtqueue: read
# sector 0 (polling the used ring), write sector 1 (waiting for IRQ 5 through the PIC), read
# sector 1 back (polling). If slot 1 holds a virtio-rng, reads 16 bytes of entropy from it.
        .code64
        .text
        .globl _start
        .set SLOT0, 0xd0001000
        .set SLOT1, 0xd0002000
        .set BLK_QUEUE, 0x200000        # descriptors; avail ring +0x1000; used ring +0x2000
        .set BLK_HEADER, 0x203000
        .set BLK_DATA, 0x204000
        .set BLK_STATUS, 0x205000
        .set RNG_QUEUE, 0x210000
        .set RNG_DATA, 0x214000
        .set QUEUE_SIZE, 8
        .set IRQ_VECTOR, 0x25           # IRQ 5 (slot 0) on the master PIC at 0x20
_start:
        call setup_interrupts
        mov $SLOT0, %ebx
        cmpl $0x74726976, (%rbx)        # MagicValue "virt"
        jne no_device
        cmpl $2, 4(%rbx)                # Version 2 (modern)
        jne no_device
        cmpl $2, 8(%rbx)                # DeviceID 2: block
        jne no_device
        mov $BLK_QUEUE, %r12d
        mov $1, %ecx
        call virtio_init
        lea found(%rip), %rsi
        call puts
        mov 0x100(%rbx), %eax           # config: capacity (le64, sectors)
        mov 0x104(%rbx), %edx
        shl $32, %rdx
        or %rdx, %rax
        call puthex64
        call newline

        # Read sector 0, polling the used ring (no interrupt asked for).
        movw $1, BLK_QUEUE+0x1000       # avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT
        xor %edi, %edi                  # VIRTIO_BLK_T_IN
        xor %esi, %esi
        call blk_request
        lea read0(%rip), %rsi
        call report_request

        # Write sector 1 with a marker, then wait for the used-buffer interrupt.
        movq $0x5355524154524154, %rax  # "TARTARUS"
        mov %rax, BLK_DATA
        movw $0, BLK_QUEUE+0x1000       # interrupts wanted
        cli
        mov $1, %edi                    # VIRTIO_BLK_T_OUT
        mov $1, %esi
        call blk_request
1:      cli
        cmpb $0, irq_count(%rip)
        jne 2f
        sti
        hlt                             # STI's shadow: HLT starts before the interrupt
        jmp 1b
2:      lea write1(%rip), %rsi
        call report_request
        lea irq_seen(%rip), %rsi
        call puts
        movb isr_value(%rip), %al
        call puthex8
        call newline

        # Read sector 1 back, polling.
        movw $1, BLK_QUEUE+0x1000
        movq $0, BLK_DATA
        xor %edi, %edi
        mov $1, %esi
        call blk_request
        lea read1(%rip), %rsi
        call report_request

        # An entropy device in slot 1, if there is one.
        mov $SLOT1, %ebx
        cmpl $0x74726976, (%rbx)
        jne done
        cmpl $4, 8(%rbx)                # DeviceID 4: entropy
        jne done
        mov $RNG_QUEUE, %r12d
        mov $1, %ecx
        call virtio_init
        movw $1, RNG_QUEUE+0x1000
        movq $RNG_DATA, RNG_QUEUE       # one device-writable 16-byte buffer
        movl $16, RNG_QUEUE+8
        movw $2, RNG_QUEUE+12           # VIRTQ_DESC_F_WRITE
        call publish_and_wait
        lea rng(%rip), %rsi
        call puts
        mov RNG_QUEUE+0x2000+8, %eax    # used.ring[0].len
        call puthex8
        lea rng_data(%rip), %rsi
        call puts
        mov RNG_DATA, %rax
        call puthex64
        mov RNG_DATA+8, %rax
        call puthex64
        call newline
done:
        lea finished(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever
no_device:
        lea missing(%rip), %rsi
        call puts
        jmp halt_forever

# EDI: request type, ESI: sector. Three descriptors (header, 512 data bytes, status byte),
# device-writable data for reads. RBX: the transport, R12: its queue memory.
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
        jmp publish_and_wait

# Puts descriptor 0 in the next avail slot, bumps avail.idx, notifies queue 0 and polls
# used.idx until the device caught up. Leaves the used element's length in EAX.
publish_and_wait:
        movzwl 0x1002(%r12), %eax       # avail.idx
        mov %eax, %ecx
        and $(QUEUE_SIZE - 1), %ecx
        movw $0, 0x1004(%r12,%rcx,2)    # avail.ring[idx % size] = head 0
        inc %eax
        mfence                          # the ring entry before the index
        mov %ax, 0x1002(%r12)
        mfence
        movl $0, 0x50(%rbx)             # QueueNotify = 0
1:      cmp %ax, 0x2002(%r12)           # used.idx
        jne 1b
        dec %eax
        and $(QUEUE_SIZE - 1), %eax
        mov 0x2008(%r12,%rax,8), %eax   # used.ring[..].len
        ret

# RSI: label. Prints "<label> status=SS len=LL data=<first 8 bytes>".
report_request:
        push %rax
        call puts
        lea status(%rip), %rsi
        call puts
        movb BLK_STATUS, %al
        call puthex8
        lea length(%rip), %rsi
        call puts
        pop %rax
        call puthex64
        lea data(%rip), %rsi
        call puts
        mov BLK_DATA, %rax
        call puthex64
        jmp newline

newline:
        push %rsi
        lea newline_text(%rip), %rsi
        call puts
        pop %rsi
        ret

setup_interrupts:
        lea virtio_handler(%rip), %rax
        mov $IRQ_VECTOR, %edx
        call setup_idt
        mov $0xdf, %al          # unmask IRQ 5 only
        call pic_init
        ret

virtio_handler:
        push %rax
        push %rbx
        mov $SLOT0, %ebx
        mov 0x60(%rbx), %eax            # InterruptStatus
        mov %al, isr_value(%rip)
        mov %eax, 0x64(%rbx)            # InterruptACK: the line drops
        incb irq_count(%rip)
        mov $0x20, %al                  # EOI
        out %al, $0x20
        pop %rbx
        pop %rax
        iretq

        .include "serial.inc"
        .include "interrupts.inc"
        .include "virtio_driver.inc"

        .section .rodata
found:        .asciz "blk: found, capacity="
read0:        .asciz "blk: read sector 0"
write1:       .asciz "blk: write sector 1"
read1:        .asciz "blk: read sector 1"
status:       .asciz " status="
length:       .asciz " len="
data:         .asciz " data="
irq_seen:     .asciz "blk: interrupt isr="
rng:          .asciz "rng: len="
rng_data:     .asciz " data="
finished:     .asciz "virtio guest done\n"
missing:      .asciz "FAIL: no virtio-blk in slot 0\n"
newline_text: .asciz "\n"

        .data
irq_count: .byte 0
isr_value: .byte 0
