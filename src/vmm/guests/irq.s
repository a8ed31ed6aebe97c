# tartarus-vmm test guest "irq": proves interrupts reach the guest. Installs an IDT, programs
# the in-kernel 8259 PIC (IRQ 4 -> vector 0x24, everything else masked), enables the UART's
# THR-empty interrupt and halts with interrupts on until the handler has run.
        .code64
        .text
        .globl _start
        .set UART_VECTOR, 0x24
_start:
        lea uart_handler(%rip), %rax
        mov $UART_VECTOR, %edx
        call setup_idt

        mov $0xef, %al          # unmask IRQ 4 only
        call pic_init

        lea waiting(%rip), %rsi
        call puts
        mov $COM1+1, %dx              # IER: THR-empty interrupt
        mov $0x02, %al
        out %al, (%dx)
        sti
3:      hlt                           # STI's shadow lets HLT start before the interrupt
        cmpb $0, irq_count(%rip)
        je 3b
        cli
        lea delivered(%rip), %rsi
        call puts
        movb iir_value(%rip), %al
        call puthex8
        lea newline(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever

uart_handler:
        push %rax
        push %rdx
        mov $COM1+2, %dx              # IIR: reading it acknowledges THR empty
        in (%dx), %al
        mov %al, iir_value(%rip)
        mov $COM1+1, %dx              # IER = 0: one interrupt is enough
        xor %eax, %eax
        out %al, (%dx)
        incb irq_count(%rip)
        mov $0x20, %al                # EOI to the master PIC
        out %al, $0x20
        pop %rdx
        pop %rax
        iretq

        .include "serial.inc"
        .include "interrupts.inc"

        .section .rodata
waiting:    .asciz "waiting for interrupt\n"
delivered:  .asciz "interrupt delivered iir="
newline:    .asciz "\n"

        .data
irq_count: .byte 0
iir_value: .byte 0
