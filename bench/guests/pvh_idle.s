# An idle guest for memory measurements, booted the same way by tartarus-vmm and QEMU (PVH
# entry, see pvh_hello.s): it waits for interrupts forever, so the VMM keeps running.
        .section .note.Xen, "a"
        .p2align 2
        .long 4
        .long 4
        .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long pvh_start

        .text
        .code32
        .globl pvh_start
pvh_start:
1:      sti
        hlt
        jmp 1b
