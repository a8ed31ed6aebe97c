# tartarus-vmm test guest "crash": triple-faults. It reads an address above the 4 GiB the
# boot page tables map; the boot IDT is empty, so the page fault becomes #GP, then #DF, then
# a CPU shutdown.
        .code64
        .text
        .globl _start
_start:
        lea message(%rip), %rsi
        call puts
        movabs $0x800000000, %rax
        movb (%rax), %al
        jmp halt_forever

        .include "serial.inc"

        .section .rodata
message: .asciz "crashing\n"
