/* Switches to 32-bit protected mode, reads the identification registers of
 * the second virtio-mmio device at 0xd0001000 (after rng: the net device
 * when nothing else is configured) and prints them in hex on COM1:
 * MagicValue Version DeviceID VendorID QueueNumMax(queue 0), then the first
 * three 32-bit words of its config space (mac, status, max_virtqueue_pairs,
 * mtu). */
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
    mov $0xd0001000, %ebx
    mov 0x000(%ebx), %eax
    call print_hex
    mov 0x004(%ebx), %eax
    call print_hex
    mov 0x008(%ebx), %eax
    call print_hex
    mov 0x00c(%ebx), %eax
    call print_hex
    mov 0x034(%ebx), %eax
    call print_hex
    mov 0x100(%ebx), %eax
    call print_hex
    mov 0x104(%ebx), %eax
    call print_hex
    mov 0x108(%ebx), %eax
    call print_hex
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
