# Persephone (tartarus-vmm snapshots) test guest "counter": runs across a snapshot boundary.
# Programs the PIC (IRQ 0 -> vector 0x20, all else masked) and the PIT (channel 0, mode 2,
# 1 kHz), then for each timer tick it observes prints one line:
#   line <n> sum <r12> r15 <r15> mem <checksum of the scratch page>
# n counts lines; r12 and r15 live only in registers and the scratch page only in memory, so
# a restore that lost any of them prints different lines. Output depends only on n, never on
# time, so a restored guest must print exactly what the original would have printed.
        .code64
        .text
        .globl _start
        .set TIMER_VECTOR, 0x20
        .set PIT_DIVISOR, 1193        # 1.193182 MHz / 1193 = 1 kHz
# No SSE: on PVM hosts KVM's instruction emulator runs this guest and lacks even MOVQ xmm.
_start:
        lea timer_handler(%rip), %rax
        mov $TIMER_VECTOR, %edx
        call setup_idt

        mov $0xfe, %al          # unmask IRQ 0 only
        call pic_init

        mov $0x34, %al                # PIT channel 0, lobyte/hibyte, mode 2 (rate generator)
        out %al, $0x43
        mov $(PIT_DIVISOR & 0xff), %al
        out %al, $0x40
        mov $(PIT_DIVISOR >> 8), %al
        out %al, $0x40

        xor %r12d, %r12d              # running sum, registers only
        mov $0x5a5a0000, %r15d        # a second register-only counter
        lea ready(%rip), %rsi
        call puts
        sti

wait_tick:
        hlt                           # woken by the timer interrupt
        mov ticks(%rip), %rax
        cmp seen_ticks(%rip), %rax
        je wait_tick
        mov %rax, seen_ticks(%rip)

        incq lines(%rip)
        mov lines(%rip), %rbx
        movabs $0x9e3779b97f4a7c15, %r13
        imul %r13, %r12
        add %rbx, %r12
        add $3, %r15
        mov %rbx, %rax                # scratch[n % 512] = n * golden ratio, then checksum it
        and $511, %eax
        lea scratch(%rip), %rdi
        mov %rbx, %rdx
        imul %r13, %rdx
        mov %rdx, (%rdi,%rax,8)
        xor %edx, %edx
        xor %ecx, %ecx
3:      add (%rdi,%rcx,8), %rdx
        rol $7, %rdx
        inc %ecx
        cmp $512, %ecx
        jne 3b

        lea line_text(%rip), %rsi
        call puts
        mov %rbx, %rax
        call puthex64
        lea sum_text(%rip), %rsi
        call puts
        mov %r12, %rax
        call puthex64
        lea r15_text(%rip), %rsi
        call puts
        mov %r15, %rax
        call puthex64
        lea mem_text(%rip), %rsi
        call puts
        mov %rdx, %rax
        call puthex64
        lea newline(%rip), %rsi
        call puts
        jmp wait_tick

timer_handler:
        push %rax
        incq ticks(%rip)
        mov $0x20, %al                # EOI to the master PIC
        out %al, $0x20
        pop %rax
        iretq

        .include "serial.inc"
        .include "interrupts.inc"

        .section .rodata
ready:      .asciz "counter ready\n"
line_text:  .asciz "line "
sum_text:   .asciz " sum "
r15_text:   .asciz " r15 "
mem_text:   .asciz " mem "
newline:    .asciz "\n"

        .data
        .balign 8
data_magic: .ascii "CNTRDATA"     # the test finds `lines` right after this
lines:      .quad 0
ticks:      .quad 0
seen_ticks: .quad 0
        .balign 4096
scratch:    .fill 512 * 8, 1, 0
