/* ticker.S for the 64-bit entry of the hull-vmm binary: linked as an ELF
 * "vmlinux" and entered in long mode, it prints a dot on COM1 every few
 * thousand instructions, forever. */
.code64
.globl _start
_start:
    cli
    mov $0x3f8, %dx
1:  mov $'.', %al
    out %al, (%dx)
    mov $20000, %ecx
2:  loop 2b
    jmp 1b
