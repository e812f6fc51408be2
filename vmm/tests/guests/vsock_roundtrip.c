/* A virtio-vsock driver in a few hundred instructions, for the second
 * virtio-mmio device (0xd0001000). Interrupts stay off: it polls the used
 * rings. It prints the device's identification registers and guest_cid,
 * brings up the rx and tx queues, then, with the host test on the other
 * side:
 *   1. connects to host port 5000, gets "ping" and answers "PING";
 *   2. takes the host's connection to its port 1024, gets "hi", answers
 *      "bye".
 * Every step is printed on COM1; anything unexpected prints and stops. */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define MMIO 0xd0001000u
#define QSIZE 8
#define RX_DESC 0x20000u
#define RX_AVAIL 0x21000u
#define RX_USED 0x22000u
#define TX_DESC 0x23000u
#define TX_AVAIL 0x24000u
#define TX_USED 0x25000u
#define RX_BUFS 0x30000u
#define TX_BUFS 0x40000u
#define HDR_LEN 44
#define GUEST_CID 3
/* Polls of a used ring before giving up: tens of seconds here. */
#define PATIENCE 3000000u

enum { REQUEST = 1, RESPONSE = 2, RST = 3, SHUTDOWN = 4, RW = 5, CREDIT_UPDATE = 6 };

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};

struct avail {
    u16 flags;
    u16 idx;
    u16 ring[QSIZE];
};

struct used {
    u16 flags;
    volatile u16 idx;
    struct {
        u32 id;
        u32 len;
    } ring[QSIZE];
};

struct hdr {
    u64 src_cid;
    u64 dst_cid;
    u32 src_port;
    u32 dst_port;
    u32 len;
    u16 type;
    u16 op;
    u32 flags;
    u32 buf_alloc;
    u32 fwd_cnt;
} __attribute__((packed));

static u32 rd(u32 offset) { return *(volatile u32 *)(MMIO + offset); }
static void wr(u32 offset, u32 value) { *(volatile u32 *)(MMIO + offset) = value; }

static void putc(char c) { __asm__ volatile("outb %0, %1" : : "a"(c), "Nd"((u16)0x3f8)); }
static void puts(const char *s) { while (*s) putc(*s++); }

static void hex(u32 v) {
    for (int shift = 28; shift >= 0; shift -= 4)
        putc("0123456789abcdef"[(v >> shift) & 15]);
    putc(' ');
}

static void put_bytes(const u8 *p, u32 len) {
    for (u32 i = 0; i < len; i++)
        putc(p[i]);
}

static void stop(const char *why, u32 value) {
    puts(why);
    putc(' ');
    hex(value);
    putc('\n');
    for (;;)
        __asm__ volatile("cli; hlt");
}

static void zero(void *p, u32 len) {
    for (u32 i = 0; i < len; i++)
        ((volatile u8 *)p)[i] = 0;
}

static u16 rx_seen, tx_seen, tx_next, tx_avail_idx;
/* Payload bytes received per connection, for the fwd_cnt we report. */
static u32 fwd_cnt;

static void setup_queue(u32 index, u32 desc, u32 avail, u32 used) {
    wr(0x030, index);
    if (rd(0x034) < QSIZE)
        stop("queue too small", rd(0x034));
    wr(0x038, QSIZE);
    wr(0x080, desc);
    wr(0x084, 0);
    wr(0x090, avail);
    wr(0x094, 0);
    wr(0x0a0, used);
    wr(0x0a4, 0);
    wr(0x044, 1);
}

/* rx chains are two descriptors: the header, then up to 256 payload bytes. */
static void post_rx(u16 head) {
    struct avail *avail = (struct avail *)RX_AVAIL;
    avail->ring[avail->idx % QSIZE] = head;
    __asm__ volatile("" ::: "memory");
    avail->idx++;
    wr(0x050, 0);
}

static void init(void) {
    wr(0x070, 0);
    wr(0x070, 1);
    wr(0x070, 1 | 2);
    wr(0x014, 1);
    if (!(rd(0x010) & 1))
        stop("no VIRTIO_F_VERSION_1", rd(0x010));
    wr(0x024, 1);
    wr(0x020, 1);
    wr(0x024, 0);
    wr(0x020, 0);
    wr(0x070, 1 | 2 | 8);
    if (!(rd(0x070) & 8))
        stop("features refused", rd(0x070));
    zero((void *)RX_DESC, 0x6000);
    setup_queue(0, RX_DESC, RX_AVAIL, RX_USED);
    setup_queue(1, TX_DESC, TX_AVAIL, TX_USED);
    wr(0x070, 1 | 2 | 8 | 4);
    if (rd(0x070) != 15)
        stop("driver refused", rd(0x070));
    struct desc *desc = (struct desc *)RX_DESC;
    for (u16 i = 0; i < QSIZE; i += 2) {
        desc[i].addr = RX_BUFS + i * 0x1000u;
        desc[i].len = HDR_LEN;
        desc[i].flags = 1 | 2; /* NEXT | WRITE */
        desc[i].next = i + 1;
        desc[i + 1].addr = RX_BUFS + (i + 1) * 0x1000u;
        desc[i + 1].len = 256;
        desc[i + 1].flags = 2;
        post_rx(i);
    }
}

/* Sends a packet (header and payload in one descriptor) and waits until
 * the device has taken it. */
static void send(u16 op, u32 src_port, u32 dst_port, const char *payload, u32 len) {
    u16 slot = tx_next++ % QSIZE;
    struct hdr *h = (struct hdr *)(TX_BUFS + slot * 0x1000u);
    zero(h, HDR_LEN);
    h->src_cid = GUEST_CID;
    h->dst_cid = 2;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->buf_alloc = 4096;
    h->fwd_cnt = fwd_cnt;
    for (u32 i = 0; i < len; i++)
        ((u8 *)h)[HDR_LEN + i] = payload[i];
    struct desc *desc = (struct desc *)TX_DESC;
    desc[slot].addr = (u32)h;
    desc[slot].len = HDR_LEN + len;
    desc[slot].flags = 0;
    struct avail *avail = (struct avail *)TX_AVAIL;
    avail->ring[tx_avail_idx % QSIZE] = slot;
    __asm__ volatile("" ::: "memory");
    avail->idx = ++tx_avail_idx;
    wr(0x050, 1);
    struct used *used = (struct used *)TX_USED;
    for (u32 n = 0; used->idx == tx_seen; n++)
        if (n == PATIENCE)
            stop("tx timeout", op);
    tx_seen++;
}

/* Waits for the next rx packet; returns its header, payload right after
 * in *payload. Skips credit updates. */
static struct hdr *recv(u8 **payload) {
    struct used *used = (struct used *)RX_USED;
    for (;;) {
        for (u32 n = 0; used->idx == rx_seen; n++)
            if (n == PATIENCE)
                stop("rx timeout", rx_seen);
        u32 head = used->ring[rx_seen % QSIZE].id;
        u32 len = used->ring[rx_seen % QSIZE].len;
        rx_seen++;
        struct desc *desc = (struct desc *)RX_DESC;
        struct hdr *h = (struct hdr *)(u32)desc[head].addr;
        if (len < HDR_LEN || h->len != len - HDR_LEN)
            stop("bad rx length", len);
        if (h->src_cid != 2 || h->dst_cid != GUEST_CID)
            stop("bad rx cid", (u32)h->dst_cid);
        *payload = (u8 *)(u32)desc[head + 1].addr;
        post_rx(head);
        if (h->op != CREDIT_UPDATE)
            return h;
    }
}

static struct hdr *expect(u16 op, u8 **payload) {
    struct hdr *h = recv(payload);
    if (h->op != op)
        stop("unexpected op", h->op);
    return h;
}

void guest_main(void) {
    static const u32 registers[] = {0x000, 0x004, 0x008, 0x00c, 0x034};
    for (u32 i = 0; i < 5; i++)
        hex(rd(registers[i]));
    putc('\n');
    puts("cid ");
    hex(rd(0x100));
    hex(rd(0x104));
    putc('\n');

    init();
    u8 *payload;

    /* 1. Guest to host: port 1234 to host port 5000. */
    send(REQUEST, 1234, 5000, 0, 0);
    struct hdr *h = expect(RESPONSE, &payload);
    puts("RESPONSE from ");
    hex(h->src_port);
    putc('\n');
    h = expect(RW, &payload);
    puts("RW ");
    put_bytes(payload, h->len);
    putc('\n');
    fwd_cnt += h->len;
    char echo[4];
    for (u32 i = 0; i < 4; i++)
        echo[i] = (i < h->len && payload[i] >= 'a' && payload[i] <= 'z') ? payload[i] - 32 : '?';
    send(RW, 1234, 5000, echo, 4);

    /* 2. Host to guest: someone wants our port 1024. */
    fwd_cnt = 0;
    h = expect(REQUEST, &payload);
    u32 host_port = h->src_port;
    puts("REQUEST to ");
    hex(h->dst_port);
    puts("from ");
    hex(host_port);
    putc('\n');
    send(RESPONSE, 1024, host_port, 0, 0);
    h = expect(RW, &payload);
    puts("RW ");
    put_bytes(payload, h->len);
    putc('\n');
    fwd_cnt += h->len;
    send(RW, 1024, host_port, "bye", 3);
    puts("done\n");
}
