# tartarus-vmm test guest "bzimage": a file shaped as Linux's bzImage is (bzimage.ld and
# objcopy turn it into a flat image): a boot sector and one setup sector holding a real setup
# header (boot protocol 2.15, XLF_KERNEL_64, relocatable, pref_address 16 MiB), then the
# protected-mode kernel, whose 64-bit entry at +0x200 checks what the 64-bit boot protocol
# hands over: the zero page's copy of the header, type_of_loader, the command line, the
# initrd (checksummed), the e820 map, acpi_rsdp_addr, paging and segment state.
        .set HEADER_LENGTH, 0x26c - 0x1f1

        # The setup header from 0x1f1 to 0x26c (0x202 + the jump's 0x6a). Emitted twice: in
        # the setup sector where the loader reads it, and in the kernel for comparison.
        .macro SETUP_HEADER
        .byte 1                       # 0x1f1 setup_sects
        .word 0                       # 0x1f2 root_flags
        .long _kernel_paragraphs      # 0x1f4 syssize
        .word 0, 0, 0                 # 0x1f8 ram_size, vid_mode, root_dev
        .word 0xaa55                  # 0x1fe boot_flag
        .byte 0xeb, 0x6a              # 0x200 jump (its offset sizes the header)
        .ascii "HdrS"                 # 0x202 header
        .word 0x020f                  # 0x206 version 2.15
        .long 0                       # 0x208 realmode_swtch
        .word 0, 0                    # 0x20c start_sys_seg, kernel_version
        .byte 0                       # 0x210 type_of_loader (the loader writes 0xff)
        .byte 0x01                    # 0x211 loadflags: LOADED_HIGH
        .word 0                       # 0x212 setup_move_size
        .long 0x100000                # 0x214 code32_start
        .long 0, 0                    # 0x218 ramdisk_image, ramdisk_size (the loader's)
        .long 0                       # 0x220 bootsect_kludge
        .word 0                       # 0x224 heap_end_ptr
        .byte 0, 0                    # 0x226 ext_loader_ver, ext_loader_type
        .long 0                       # 0x228 cmd_line_ptr (the loader's)
        .long 0x7fffffff              # 0x22c initrd_addr_max
        .long 0x200000                # 0x230 kernel_alignment
        .byte 1                       # 0x234 relocatable_kernel
        .byte 21                      # 0x235 min_alignment
        .word 0x0001                  # 0x236 xloadflags: XLF_KERNEL_64
        .long 255                     # 0x238 cmdline_size
        .long 0                       # 0x23c hardware_subarch
        .quad 0                       # 0x240 hardware_subarch_data
        .long 0, 0                    # 0x248 payload_offset, payload_length
        .quad 0                       # 0x250 setup_data
        .quad 0x1000000               # 0x258 pref_address
        .long _kernel_init_size       # 0x260 init_size
        .long 0                       # 0x264 handover_offset
        .long 0                       # 0x268 kernel_info_offset
        .endm

        .section .setup, "a"
        .org 0x1f1
        SETUP_HEADER
        .org 0x400                    # boot sector + setup_sects (1) sectors

        .section .kernel, "ax"
        .code32
startup_32:                           # the 32-bit entry; this loader uses the 64-bit one
        cli
        hlt
        jmp startup_32
        .org 0x200
        .code64
        .globl startup_64
startup_64:
        mov %rsi, %rbx                # the zero page
        lea entry_label(%rip), %rsi
        call puts
        lea startup_64(%rip), %rax
        call puthex64
        call newline

        lea 0x1f1(%rbx), %rsi         # the header copy, minus the loader's own fields
        lea scratch(%rip), %rdi
        mov $HEADER_LENGTH, %ecx
        rep movsb
        movb $0, scratch + 0x210 - 0x1f1(%rip)
        movq $0, scratch + 0x218 - 0x1f1(%rip)
        movl $0, scratch + 0x228 - 0x1f1(%rip)
        lea scratch(%rip), %rsi
        lea header_copy(%rip), %rdi
        mov $HEADER_LENGTH, %ecx
        repe cmpsb
        lea header_label(%rip), %rsi
        call report
        cmpb $0xff, 0x210(%rbx)       # type_of_loader
        lea loader_label(%rip), %rsi
        call report

        lea cmdline_label(%rip), %rsi
        call puts
        mov 0x228(%rbx), %esi         # cmd_line_ptr
        call puts
        call newline

        lea ramdisk_label(%rip), %rsi
        call puts
        mov 0x218(%rbx), %eax         # ramdisk_image
        call puthex64
        call space
        mov 0x21c(%rbx), %eax         # ramdisk_size
        call puthex64
        call newline
        lea fnv_label(%rip), %rsi
        call puts
        mov 0x218(%rbx), %esi
        mov 0x21c(%rbx), %ecx
        call fnv1a
        call puthex64
        call newline

        movzbl 0x1e8(%rbx), %r12d     # e820_entries
        lea 0x2d0(%rbx), %r13         # e820_table, 20 bytes per entry
        lea e820_count_label(%rip), %rsi
        call puts
        mov %r12, %rax
        call puthex8
        call newline
1:      test %r12d, %r12d
        jz 2f
        lea e820_label(%rip), %rsi
        call puts
        mov (%r13), %rax
        call puthex64
        call space
        mov 8(%r13), %rax
        call puthex64
        call space
        mov 16(%r13), %eax
        call puthex8
        call newline
        add $20, %r13
        dec %r12d
        jmp 1b

2:      lea rsdp_label(%rip), %rsi
        call puts
        mov 0x70(%rbx), %rax          # acpi_rsdp_addr
        call puthex64
        call newline

        mov %cr0, %rax                # PE and PG; PAE; EFER.LME and LMA
        and $0x80000001, %eax
        cmp $0x80000001, %eax
        jne 3f
        mov %cr4, %rax
        test $0x20, %al
        jz 3f
        mov $0xc0000080, %ecx
        rdmsr
        and $0x500, %eax
        cmp $0x500, %eax
3:      lea paging_label(%rip), %rsi
        call report
        mov %cs, %ax                  # __BOOT_CS / __BOOT_DS of the boot GDT
        cmp $0x08, %ax
        jne 4f
        mov %ds, %ax
        cmp $0x10, %ax
        jne 4f
        mov %ss, %ax
        cmp $0x10, %ax
4:      lea segments_label(%rip), %rsi
        call report

        lea done_label(%rip), %rsi
        call puts
        call boot_complete
        jmp halt_forever

report:                               # "<label>: ok\n" when ZF is set, else ": FAIL\n"
        pushf
        call puts
        popf
        push %rsi
        lea ok_text(%rip), %rsi
        jz 1f
        lea fail_text(%rip), %rsi
1:      call puts
        pop %rsi
        ret

fnv1a:                                # RAX = FNV-1a (32-bit) of ECX bytes at RSI
        push %rsi
        push %rcx
        push %rdx
        mov $0x811c9dc5, %eax
        test %ecx, %ecx
        jz 2f
1:      movzbl (%rsi), %edx
        xor %edx, %eax
        imul $0x01000193, %eax, %eax
        inc %rsi
        dec %ecx
        jnz 1b
2:      pop %rdx
        pop %rcx
        pop %rsi
        ret

newline:
        push %rsi
        lea newline_text(%rip), %rsi
        call puts
        pop %rsi
        ret

space:
        push %rsi
        lea space_text(%rip), %rsi
        call puts
        pop %rsi
        ret

        .include "serial.inc"

        .section .rodata
header_copy:      SETUP_HEADER
entry_label:      .asciz "entry="
header_label:     .asciz "setup header copy"
loader_label:     .asciz "type_of_loader"
cmdline_label:    .asciz "cmdline="
ramdisk_label:    .asciz "ramdisk="
fnv_label:        .asciz "initrd fnv="
e820_count_label: .asciz "e820 entries="
e820_label:       .asciz "e820 "
rsdp_label:       .asciz "rsdp="
paging_label:     .asciz "long mode paging"
segments_label:   .asciz "boot segments"
done_label:       .asciz "bzimage done\n"
ok_text:          .asciz ": ok\n"
fail_text:        .asciz ": FAIL\n"
newline_text:     .asciz "\n"
space_text:       .asciz " "

        .data
scratch: .fill HEADER_LENGTH, 1, 0
