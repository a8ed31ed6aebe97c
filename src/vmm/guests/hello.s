# tartarus-vmm test guest "hello": checks it runs in long mode at CPL0, greets over serial,
# signals boot complete and halts with interrupts off.
        .code64
        .text
        .globl _start
_start:
        mov $0xc0000080, %ecx         # EFER: LMA (bit 10) says long mode is active
        rdmsr
        bt $10, %eax
        jnc not_long_mode
        mov %cs, %eax
        test $3, %eax                 # CS.RPL is the current privilege level
        jnz not_cpl0
        lea hello(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever
not_long_mode:
        lea no_long_mode(%rip), %rsi
        call puts
        jmp halt_forever
not_cpl0:
        lea no_cpl0(%rip), %rsi
        call puts
        jmp halt_forever

        .include "serial.inc"

        .section .rodata
hello:        .asciz "hello from the guest\n"
no_long_mode: .asciz "FAIL: not in long mode\n"
no_cpl0:      .asciz "FAIL: not at CPL0\n"
