# tartarus-vmm test guest "bootinfo": echoes what the loader handed over in the zero page
# (RSI): the header magic, the command line and every e820 entry.
        .code64
        .text
        .globl _start
_start:
        mov %rsi, %rbx                # the zero page
        lea hdr_label(%rip), %rsi
        call puts
        mov 0x202(%rbx), %eax         # setup header magic "HdrS"
        call puthex64
        lea cmdline_label(%rip), %rsi
        call puts
        mov 0x228(%rbx), %esi         # cmd_line_ptr
        call puts
        lea newline(%rip), %rsi
        call puts
        movzbl 0x1e8(%rbx), %r12d     # e820_entries
        lea 0x2d0(%rbx), %r13         # e820_table, 20 bytes per entry
        lea count_label(%rip), %rsi
        call puts
        mov %r12, %rax
        call puthex8
        lea newline(%rip), %rsi
        call puts
1:      test %r12d, %r12d
        jz 2f
        lea entry_label(%rip), %rsi
        call puts
        mov (%r13), %rax
        call puthex64
        lea space(%rip), %rsi
        call puts
        mov 8(%r13), %rax
        call puthex64
        lea space(%rip), %rsi
        call puts
        mov 16(%r13), %eax
        call puthex8
        lea newline(%rip), %rsi
        call puts
        add $20, %r13
        dec %r12d
        jmp 1b
2:      lea done(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever

        .include "serial.inc"

        .section .rodata
hdr_label:     .asciz "header="
cmdline_label: .asciz "\ncmdline="
count_label:   .asciz "e820 entries="
entry_label:   .asciz "e820 "
space:         .asciz " "
newline:       .asciz "\n"
done:          .asciz "bootinfo done\n"
