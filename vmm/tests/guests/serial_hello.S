/* A real-mode guest: prints a line on COM1 and halts. */
.code16
.globl _start
_start:
    mov $0x3f8, %dx
    mov $message, %si
1:  lodsb
    test %al, %al
    jz 2f
    out %al, (%dx)
    jmp 1b
2:  hlt

message:
    .asciz "Hello from a tiny guest\n"
