/* The identification registers of the second virtio-mmio device at
 * 0xd0001000 (after rng: the net device when nothing else is configured),
 * then the first three 32-bit words of its config space (mac, status,
 * max_virtqueue_pairs, mtu), printed as virtio_registers.S prints them. */
#define MMIO_BASE 0xd0001000
#define CONFIG_WORDS
#include "virtio_registers.S"
