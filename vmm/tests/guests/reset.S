/* Resets the machine through the keyboard controller, as Linux's
 * reboot=k does; a VMM that ignored it would reach the hlt instead. */
.code16
.globl _start
_start:
    mov $0xfe, %al
    out %al, $0x64
    hlt
