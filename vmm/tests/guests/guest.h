/* Serial output and MMIO access for the freestanding C guests. Everything
 * device-visible goes through volatile pointers, and the compiler barrier
 * keeps ring writes ahead of the register write that publishes them. */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;

#define barrier() __asm__ volatile("" ::: "memory")

static inline void putc(char c)
{
    __asm__ volatile("outb %0, %1" : : "a"(c), "Nd"((u16)0x3f8));
}

static inline void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

/* Prints value as 8 hex digits and a space. */
static inline void print_hex(u32 value)
{
    for (int shift = 28; shift >= 0; shift -= 4)
        putc("0123456789abcdef"[(value >> shift) & 0xf]);
    putc(' ');
}

static inline void print_field(const char *name, u32 value)
{
    puts(name);
    putc('=');
    print_hex(value);
}

static inline u32 mmio_read(u32 addr)
{
    barrier();
    return *(volatile u32 *)addr;
}

static inline u8 mmio_read8(u32 addr)
{
    barrier();
    return *(volatile u8 *)addr;
}

static inline void mmio_write(u32 addr, u32 value)
{
    barrier();
    *(volatile u32 *)addr = value;
    barrier();
}

static inline void poke32(u32 addr, u32 value) { *(volatile u32 *)addr = value; }
static inline void poke16(u32 addr, u16 value) { *(volatile u16 *)addr = value; }
static inline u32 peek32(u32 addr) { return *(volatile u32 *)addr; }
static inline u16 peek16(u32 addr) { return *(volatile u16 *)addr; }

/* The virtio-fs device's registers: rng is at 0xd0000000, fs follows. */
#define FS 0xd0001000u
#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_VENDOR 0x00c
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_INTERRUPT_STATUS 0x060
#define REG_INTERRUPT_ACK 0x064
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_AVAIL_LOW 0x090
#define REG_QUEUE_AVAIL_HIGH 0x094
#define REG_QUEUE_USED_LOW 0x0a0
#define REG_QUEUE_USED_HIGH 0x0a4
#define REG_CONFIG 0x100

#endif
