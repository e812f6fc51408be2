/* Prints a dot on COM1 every few thousand instructions, forever: a guest
 * that is always running, for pausing, resuming and stopping. */
.code16
.globl _start
_start:
    cli
    mov $0x3f8, %dx
1:  mov $'.', %al
    out %al, (%dx)
    mov $2000, %cx
2:  loop 2b
    jmp 1b
