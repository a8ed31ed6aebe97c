# tartarus-vmm test guest "keyboard": reads its keys from the i8042 as Linux does. Reads the
# controller's control byte (command 0x20, polled), then takes keyboard interrupts (IRQ 1 ->
# vector 0x21 through the 8259 PIC), one scancode per interrupt from port 0x60, until four
# have come (Ctrl+Alt+Del in set 2 is 14 11 e0 71), prints them and halts.
        .code64
        .text
        .globl _start
        .set KEYBOARD_VECTOR, 0x21
        .set KEYS_WANTED, 4
_start:
        mov $0x20, %al                # controller command: read the control byte
        out %al, $0x64
1:      in $0x64, %al                 # wait for "output buffer full"
        test $0x01, %al
        jz 1b
        in $0x60, %al
        mov %al, %bl                  # printed once interrupts are set up

        lea keyboard_handler(%rip), %rax
        mov $KEYBOARD_VECTOR, %edx
        call setup_idt

        mov $0xfd, %al          # unmask IRQ 1 only
        call pic_init

        lea ready(%rip), %rsi         # the host may send keys from now on
        call puts
        mov %bl, %al
        call puthex8
        lea newline(%rip), %rsi
        call puts
        call boot_complete
        sti
4:      hlt
        cmpb $KEYS_WANTED, key_count(%rip)
        jb 4b
        cli
        lea keys(%rip), %rsi
        call puts
        lea key_buffer(%rip), %rbx
        xor %ecx, %ecx
5:      movb (%rbx,%rcx), %al
        call puthex8
        mov $' ', %al
        call putc
        inc %ecx
        cmp $KEYS_WANTED, %ecx
        jne 5b
        lea newline(%rip), %rsi
        call puts
        jmp halt_forever

keyboard_handler:
        push %rax
        push %rcx
        push %rdx
        in $0x60, %al                 # one scancode; the controller raises IRQ 1 for the next
        movzbl key_count(%rip), %ecx
        cmp $KEYS_WANTED, %ecx
        jae 1f
        lea key_buffer(%rip), %rdx
        mov %al, (%rdx,%rcx)
        incb key_count(%rip)
1:      mov $0x20, %al                # EOI to the master PIC
        out %al, $0x20
        pop %rdx
        pop %rcx
        pop %rax
        iretq

        .include "serial.inc"
        .include "interrupts.inc"

        .section .rodata
ready:      .asciz "keyboard ready ctr="
keys:       .asciz "keys: "
newline:    .asciz "\n"

        .data
key_count:  .byte 0
key_buffer: .fill 8, 1, 0
