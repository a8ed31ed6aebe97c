# tartarus-vmm test guest "idle": says so, masks every PIC line and halts with interrupts on,
# forever: a VM that stays running (for API tests of pause, resume and the state rules).
        .code64
        .text
        .globl _start
_start:
        mov $0xff, %al                # mask both 8259s: nothing will wake us
        out %al, $0x21
        out %al, $0xa1
        lea idle(%rip), %rsi
        call puts
        sti
1:      hlt                           # IF=1: the VMM's halt detection leaves us running
        jmp 1b

        .include "serial.inc"

        .section .rodata
idle:   .asciz "idle guest running\n"
