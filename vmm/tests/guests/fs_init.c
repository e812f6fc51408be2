/* A FUSE_INIT round trip through virtio-fs, twice, with a device reset in
 * between: the driver side of the virtio-mmio version 2 transport, set up
 * by hand on the request queue (queue 1), polled rather than interrupted.
 * Each round prints the used ring's index and length, the reply's error,
 * major and minor, and the interrupt status the back end's call raised. */
#include "guest.h"

#define QUEUE 1
#define QUEUE_SIZE 8
#define DESC 0x100000u
#define AVAIL 0x101000u
#define USED 0x102000u
#define REQUEST 0x103000u
#define REPLY 0x104000u
#define REPLY_LEN 256
#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define FUSE_INIT 26
#define IN_HEADER_LEN 40
#define INIT_IN_LEN 16
/* Bounds for the polls, so a broken device ends the guest instead of
 * spinning forever under an emulated vCPU. */
#define USED_POLLS 5000000
#define INTERRUPT_POLLS 100000

static void status(u32 value) { mmio_write(FS + REG_STATUS, value); }

static void zero(u32 addr, u32 len)
{
    for (u32 i = 0; i < len; i += 4)
        poke32(addr + i, 0);
}

static void descriptor(u32 index, u32 addr, u32 len, u16 flags, u16 next)
{
    u32 at = DESC + index * 16;
    poke32(at, addr);
    poke32(at + 4, 0);
    poke32(at + 8, len);
    poke16(at + 12, flags);
    poke16(at + 14, next);
}

static void fuse_init(u32 unique)
{
    status(0);
    status(1);     /* ACKNOWLEDGE */
    status(1 | 2); /* DRIVER */
    mmio_write(FS + REG_DRIVER_FEATURES_SEL, 1);
    mmio_write(FS + REG_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1, bit 32 */
    mmio_write(FS + REG_DRIVER_FEATURES_SEL, 0);
    mmio_write(FS + REG_DRIVER_FEATURES, 0);
    status(1 | 2 | 8); /* FEATURES_OK */
    if (!(mmio_read(FS + REG_STATUS) & 8)) {
        puts("features refused\n");
        return;
    }

    zero(DESC, 0x5000);
    /* The request: fuse_in_header, then the 7.12-era fuse_init_in. */
    poke32(REQUEST + 0, IN_HEADER_LEN + INIT_IN_LEN);
    poke32(REQUEST + 4, FUSE_INIT);
    poke32(REQUEST + 8, unique);
    poke32(REQUEST + IN_HEADER_LEN + 0, 7);  /* major */
    poke32(REQUEST + IN_HEADER_LEN + 4, 38); /* minor */
    descriptor(0, REQUEST, IN_HEADER_LEN + INIT_IN_LEN, DESC_F_NEXT, 1);
    descriptor(1, REPLY, REPLY_LEN, DESC_F_WRITE, 0);
    poke16(AVAIL + 4, 0); /* ring[0]: the chain at descriptor 0 */
    poke16(AVAIL + 2, 1); /* idx */

    mmio_write(FS + REG_QUEUE_SEL, QUEUE);
    mmio_write(FS + REG_QUEUE_NUM, QUEUE_SIZE);
    mmio_write(FS + REG_QUEUE_DESC_LOW, DESC);
    mmio_write(FS + REG_QUEUE_DESC_HIGH, 0);
    mmio_write(FS + REG_QUEUE_AVAIL_LOW, AVAIL);
    mmio_write(FS + REG_QUEUE_AVAIL_HIGH, 0);
    mmio_write(FS + REG_QUEUE_USED_LOW, USED);
    mmio_write(FS + REG_QUEUE_USED_HIGH, 0);
    mmio_write(FS + REG_QUEUE_READY, 1);
    status(1 | 2 | 8 | 4); /* DRIVER_OK: the device starts the back end */
    mmio_write(FS + REG_QUEUE_NOTIFY, QUEUE);

    u32 polls = 0;
    while (peek16(USED + 2) == 0 && polls < USED_POLLS)
        polls++;
    if (polls == USED_POLLS)
        puts("timeout ");
    barrier();
    u32 interrupt = 0;
    for (u32 i = 0; i < INTERRUPT_POLLS && !(interrupt & 1); i++)
        interrupt = mmio_read(FS + REG_INTERRUPT_STATUS);
    mmio_write(FS + REG_INTERRUPT_ACK, interrupt);

    print_field("used", peek16(USED + 2));
    print_field("len", peek32(USED + 8));
    print_field("error", peek32(REPLY + 4));
    print_field("unique", peek32(REPLY + 8));
    print_field("major", peek32(REPLY + 16));
    print_field("minor", peek32(REPLY + 20));
    print_field("isr", interrupt);
    putc('\n');
}

void guest_main(void)
{
    fuse_init(1);
    fuse_init(2);
    status(0);
}
