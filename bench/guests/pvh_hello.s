# The smallest guest both tartarus-vmm and QEMU's microvm machine boot the same way: an ELF
# with a PVH entry note (Xen ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY). Its 32-bit entry
# writes "H\n" to the 8250 on port 0x3f8, writes QEMU's isa-debug-exit port 0xf4 (unclaimed
# in tartarus-vmm, whose reads and writes there are ignored) and halts with interrupts off.
        .section .note.Xen, "a"
        .p2align 2
        .long 4                 # name size ("Xen\0")
        .long 4                 # descriptor size
        .long 18                # XEN_ELFNOTE_PHYS32_ENTRY
        .asciz "Xen"
        .long pvh_start

        .text
        .code32
        .globl pvh_start
pvh_start:
        cli
        movw $0x3f8, %dx
        movb $'H', %al
        outb %al, %dx
        movb $'\n', %al
        outb %al, %dx
        movw $0xf4, %dx
        xorb %al, %al
        outb %al, %dx
1:      hlt
        jmp 1b
