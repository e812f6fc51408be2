/* Entry for the tiny guests written in C: switches to flat 32-bit protected
 * mode (interrupts stay off), sets up a stack below 512 KiB and calls
 * guest_main(); halts when it returns. Linked first, so _start is at the
 * image's load address. */
.code16
.section .text
.globl _start
_start:
    cli
    lgdtl gdt_descriptor
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $protected

.code32
protected:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x80000, %esp
    call guest_main
1:  hlt
    jmp 1b

.align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* flat 32-bit code */
    .quad 0x00cf92000000ffff    /* flat 32-bit data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
