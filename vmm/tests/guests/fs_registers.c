/* Prints the virtio-fs device's identification registers, its features
 * (both halves), the request queue's maximum size, then its config space:
 * the tag read a byte at a time and num_request_queues. */
#include "guest.h"

void guest_main(void)
{
    print_hex(mmio_read(FS + REG_MAGIC));
    print_hex(mmio_read(FS + REG_VERSION));
    print_hex(mmio_read(FS + REG_DEVICE_ID));
    print_hex(mmio_read(FS + REG_VENDOR));
    mmio_write(FS + REG_DEVICE_FEATURES_SEL, 0);
    print_hex(mmio_read(FS + REG_DEVICE_FEATURES));
    mmio_write(FS + REG_DEVICE_FEATURES_SEL, 1);
    print_hex(mmio_read(FS + REG_DEVICE_FEATURES));
    mmio_write(FS + REG_QUEUE_SEL, 1);
    print_hex(mmio_read(FS + REG_QUEUE_NUM_MAX));
    putc('[');
    for (u32 i = 0; i < 36; i++) {
        u8 c = mmio_read8(FS + REG_CONFIG + i);
        if (c == 0)
            break;
        putc(c);
    }
    puts("] ");
    print_hex(mmio_read(FS + REG_CONFIG + 36));
    putc('\n');
}
