/* Switches to 32-bit protected mode, reads the identification registers of
 * the virtio-mmio device at MMIO_BASE (unless defined otherwise the first,
 * at 0xd0000000) and prints them in hex on COM1:
 * MagicValue Version DeviceID VendorID QueueNumMax(queue 0), then, with
 * CONFIG_WORDS defined, the first three 32-bit words of its config space.
 * Other guests define those and include this file. */
#ifndef MMIO_BASE
#define MMIO_BASE 0xd0000000
#endif
.code16
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
    mov $0x9000, %esp
    mov $MMIO_BASE, %ebx
    .irp offset, 0x000, 0x004, 0x008, 0x00c, 0x034
    mov \offset(%ebx), %eax
    call print_hex
    .endr
#ifdef CONFIG_WORDS
    .irp offset, 0x100, 0x104, 0x108
    mov \offset(%ebx), %eax
    call print_hex
    .endr
#endif
    mov $'\n', %al
    call putc
    hlt

/* Prints %eax as 8 hex digits and a space. */
print_hex:
    pusha
    mov $8, %ecx
1:  rol $4, %eax
    mov %eax, %edi
    and $0xf, %eax
    mov hex_digits(%eax), %al
    call putc
    mov %edi, %eax
    loop 1b
    mov $' ', %al
    call putc
    popa
    ret

putc:
    mov $0x3f8, %dx
    out %al, (%dx)
    ret

hex_digits:
    .ascii "0123456789abcdef"

.align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff    /* flat 32-bit code */
    .quad 0x00cf92000000ffff    /* flat 32-bit data */
gdt_end:
gdt_descriptor:
    .word gdt_end - gdt - 1
    .long gdt
