# tartarus-vmm test guest "pvhboot": an ELF packaged as Linux's vmlinux is for PVH boot. Its
# XEN_ELFNOTE_PHYS32_ENTRY note names a 32-bit entry, which checks what the PVH boot ABI hands
# over: protected mode without paging, EBX -> hvm_start_info (magic, command line, the initrd
# module, the memory map) and the ACPI tables behind rsdp_paddr (RSDP -> XSDT -> FADT/DSDT and
# MADT, signatures and checksums, the LNRO0005 devices and local APICs they describe).
        .set START_INFO_MAGIC, 0x336ec578

        .section .note.Xen, "a", @note
        .balign 4
        .long 4, 6, 6                 # XEN_ELFNOTE_GUEST_OS "linux": a note to walk past
        .asciz "Xen"
        .balign 4
        .asciz "linux"
        .balign 4
        .long 4, 4, 18                # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .balign 4
        .long pvh_start
        .balign 4

        .text
        .code32
        .globl _start
_start:
pvh_start:
        mov $stack_top, %esp
        mov %ebx, %ebp                # hvm_start_info
        cmpl $START_INFO_MAGIC, (%ebp)
        lea magic_label, %esi
        call report
        lea version_label, %esi
        call puts
        mov 4(%ebp), %eax
        call puthex32
        call newline
        mov %cr0, %eax                # PE set, PG clear
        and $0x80000001, %eax
        cmp $1, %eax
        lea mode_label, %esi
        call report
        mov %cs, %ax                  # flat segments from the boot GDT
        cmp $0x08, %ax
        jne 1f
        mov %ds, %ax
        cmp $0x10, %ax
        jne 1f
        mov %ss, %ax
        cmp $0x10, %ax
1:      lea segments_label, %esi
        call report

        lea cmdline_label, %esi
        call puts
        mov 24(%ebp), %esi            # cmdline_paddr (below 4 GiB)
        call puts
        call newline

        lea modules_label, %esi
        call puts
        mov 12(%ebp), %eax            # nr_modules
        call puthex32
        call newline
        cmpl $0, 12(%ebp)
        je 2f
        mov 16(%ebp), %edi            # modlist_paddr -> hvm_modlist_entry
        lea module_label, %esi
        call puts
        mov 4(%edi), %eax
        call puthex32
        mov (%edi), %eax
        call puthex32
        call space
        mov 12(%edi), %eax
        call puthex32
        mov 8(%edi), %eax
        call puthex32
        call newline
        lea fnv_label, %esi
        call puts
        mov (%edi), %esi
        mov 8(%edi), %ecx
        call fnv1a
        call puthex32
        call newline

2:      lea memmap_label, %esi
        call puts
        mov 48(%ebp), %eax            # memmap_entries
        call puthex8
        call newline
        mov 40(%ebp), %edi            # memmap_paddr
        mov 48(%ebp), %ecx
3:      test %ecx, %ecx
        jz 4f
        lea memmap_entry_label, %esi
        call puts
        mov 4(%edi), %eax
        call puthex32
        mov (%edi), %eax
        call puthex32
        call space
        mov 12(%edi), %eax
        call puthex32
        mov 8(%edi), %eax
        call puthex32
        call space
        mov 16(%edi), %eax
        call puthex8
        call newline
        add $24, %edi
        dec %ecx
        jmp 3b

4:      lea rsdp_value_label, %esi
        call puts
        mov 36(%ebp), %eax
        call puthex32
        mov 32(%ebp), %eax
        call puthex32
        call newline
        mov 32(%ebp), %edi            # the RSDP: "RSD PTR ", revision 2, both checksums
        cmpl $0x20445352, (%edi)
        jne 5f
        cmpl $0x20525450, 4(%edi)
        jne 5f
        cmpb $2, 15(%edi)
        jne 5f
        mov %edi, %esi
        mov $20, %ecx
        call sum_bytes
        jnz 5f
        mov $36, %ecx
        call sum_bytes
5:      lea rsdp_label, %esi
        call report

        mov 24(%edi), %edi            # XsdtAddress (below 4 GiB)
        cmpl $0x54445358, (%edi)      # "XSDT"
        jne 6f
        mov %edi, %esi
        mov 4(%edi), %ecx
        call sum_bytes
6:      lea xsdt_label, %esi
        call report
        mov 4(%edi), %ecx             # (length - 36) / 8 table pointers
        sub $36, %ecx
        shr $3, %ecx
        lea 36(%edi), %ebx
7:      test %ecx, %ecx
        jz 9f
        mov (%ebx), %esi
        call check_table
        cmp $0x50434146, %eax         # "FACP": follow X_DSDT
        jne 8f
        push %esi
        mov 140(%esi), %esi
        call check_table
        call count_virtio
        pop %esi
8:      cmp $0x43495041, %eax         # "APIC" (the MADT)
        jne 10f
        call count_madt
10:     add $8, %ebx
        dec %ecx
        jmp 7b

9:      lea done_label, %esi
        call puts
        call boot_complete
        jmp halt_forever

check_table:                          # ESI = table: "table XXXX: ok" if its checksum holds
        push %ecx                     # returns EAX = its signature
        push %esi
        mov (%esi), %eax
        mov %eax, table_sig
        mov 4(%esi), %ecx
        call sum_bytes
        lea table_label, %esi
        call report
        pop %esi
        mov (%esi), %eax
        pop %ecx
        ret

count_virtio:                         # ESI = DSDT: prints how many "LNRO0005" it names
        pusha
        mov 4(%esi), %ecx
        sub $8, %ecx
        xor %edx, %edx
1:      cmpl $0x4f524e4c, (%esi)      # "LNRO"
        jne 2f
        cmpl $0x35303030, 4(%esi)     # "0005"
        jne 2f
        inc %edx
2:      inc %esi
        dec %ecx
        jnz 1b
        lea virtio_label, %esi
        call puts
        mov %edx, %eax
        call puthex8
        call newline
        popa
        ret

count_madt:                           # ESI = MADT: prints its local APIC and IOAPIC counts
        pusha
        mov 4(%esi), %ecx
        add %esi, %ecx                # end of the table
        lea 44(%esi), %edi            # first interrupt controller structure
        xor %edx, %edx
        xor %ebx, %ebx
1:      cmp %ecx, %edi
        jae 4f
        movzbl (%edi), %eax
        cmp $0, %al
        jne 2f
        inc %edx
2:      cmp $1, %al
        jne 3f
        inc %ebx
3:      movzbl 1(%edi), %eax
        test %eax, %eax
        jz 4f
        add %eax, %edi
        jmp 1b
4:      lea lapics_label, %esi
        call puts
        mov %edx, %eax
        call puthex8
        lea ioapics_label, %esi
        call puts
        mov %ebx, %eax
        call puthex8
        call newline
        popa
        ret

newline:
        push %esi
        lea newline_text, %esi
        call puts
        pop %esi
        ret

space:
        push %esi
        lea space_text, %esi
        call puts
        pop %esi
        ret

        .include "serial32.inc"

        .section .rodata
magic_label:        .asciz "pvh magic"
version_label:      .asciz "pvh version="
mode_label:         .asciz "protected mode without paging"
segments_label:     .asciz "flat segments"
cmdline_label:      .asciz "cmdline="
modules_label:      .asciz "modules="
module_label:       .asciz "module "
fnv_label:          .asciz "initrd fnv="
memmap_label:       .asciz "memmap entries="
memmap_entry_label: .asciz "memmap "
rsdp_value_label:   .asciz "rsdp="
rsdp_label:         .asciz "rsdp"
xsdt_label:         .asciz "xsdt"
virtio_label:       .asciz "virtio devices="
lapics_label:       .asciz "lapics="
ioapics_label:      .asciz " ioapics="
done_label:         .asciz "pvh done\n"
newline_text:       .asciz "\n"
space_text:         .asciz " "

        .data
table_label:        .ascii "table "
table_sig:          .asciz "????"
        .balign 16
stack:  .fill 1024, 1, 0
stack_top:
