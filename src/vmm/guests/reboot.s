# tartarus-vmm test guest "reboot": asks the i8042 to pulse the reset line.
        .code64
        .text
        .globl _start
_start:
        lea message(%rip), %rsi
        call puts
        mov $0xfe, %al
        out %al, $0x64
        jmp halt_forever

        .include "serial.inc"

        .section .rodata
message: .asciz "rebooting\n"
