/* Floods COM1 for as long as it runs, as a hostile guest's console does:
 * 64 Ki bytes without a newline, then 64 short lines, over and over. */
.code16
.globl _start
_start:
    cli
    mov $0x3f8, %dx
1:  mov $'x', %al
    xor %cx, %cx
2:  out %al, (%dx)
    loop 2b
    mov $64, %bx
3:  mov $'y', %al
    out %al, (%dx)
    mov $'\n', %al
    out %al, (%dx)
    dec %bx
    jnz 3b
    jmp 1b
