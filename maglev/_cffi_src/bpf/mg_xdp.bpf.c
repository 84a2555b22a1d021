/* The XDP program of the AF_XDP NIC (maglev/nic/afxdp.py): packets for a configured VIP go
 * to the AF_XDP socket of their receive queue, everything else to the kernel (XDP_PASS),
 * so ARP, BGP, SSH and health probes on the same interface keep working.
 *
 * "For a VIP" = the IPv4 or IPv6 destination address is in vip_addrs (16-byte keys, IPv4
 * as ::ffff:a.b.c.d).  That covers fragments (every fragment carries the destination)
 * and inbound ICMP errors for VIP flows (they are addressed to the VIP, the source of the
 * reply they quote).  Ports are not looked at: the data path matches (address, port,
 * protocol) and counts what matches no VIP.  One 802.1Q/802.1ad tag is skipped.
 *
 * Built by maglev/_cffi_src/build.py with `clang -O2 -target bpf -c` into
 * maglev/data/mg_xdp.bpf.o and loaded by maglev/nic/xdp_loader.py, a small loader of our
 * own on the raw bpf(2) syscall (no libbpf): it creates the maps below from the legacy
 * "maps" section and patches their file descriptors into the program.  So this file
 * includes no libbpf header; the few kernel ABI definitions it needs are spelled out.
 */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct xdp_md {
    __u32 data;
    __u32 data_end;
    __u32 data_meta;
    __u32 ingress_ifindex;
    __u32 rx_queue_index;
    __u32 egress_ifindex;
};

#define XDP_PASS 2
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_XSKMAP 17

/* The loader's map definition (the legacy libbpf "maps" section layout). */
struct mg_map_def {
    __u32 type;
    __u32 key_size;
    __u32 value_size;
    __u32 max_entries;
    __u32 map_flags;
};

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

SEC("maps") struct mg_map_def xsks = {BPF_MAP_TYPE_XSKMAP, 4, 4, 64, 0};
SEC("maps") struct mg_map_def vip_addrs = {BPF_MAP_TYPE_HASH, 16, 4, 1024, 0};
/* [0] packets redirected, [1] passed to the kernel */
SEC("maps") struct mg_map_def counters = {BPF_MAP_TYPE_ARRAY, 4, 8, 2, 0};

static __attribute__((always_inline)) void count(__u32 i)
{
    __u64 *c = bpf_map_lookup_elem(&counters, &i);
    if (c)
        __sync_fetch_and_add(c, 1);
}

SEC("xdp") int mg_xdp(struct xdp_md *ctx)
{
    __u8 *data = (__u8 *)(long)ctx->data;
    __u8 *end = (__u8 *)(long)ctx->data_end;
    __u8 key[16];
    __u32 off = 14;
    if (data + 14 > end)
        goto pass;
    __u16 et = (__u16)(data[12] << 8 | data[13]);
    if (et == 0x8100 || et == 0x88a8) {
        if (data + 18 > end)
            goto pass;
        et = (__u16)(data[16] << 8 | data[17]);
        off = 18;
    }
    if (et == 0x0800) {
        if (data + off + 20 > end)
            goto pass;
        for (int i = 0; i < 10; i++)
            key[i] = 0;
        key[10] = 0xff;
        key[11] = 0xff;
        for (int i = 0; i < 4; i++)
            key[12 + i] = data[off + 16 + i];
    } else if (et == 0x86dd) {
        if (data + off + 40 > end)
            goto pass;
        for (int i = 0; i < 16; i++)
            key[i] = data[off + 24 + i];
    } else {
        goto pass;
    }
    if (!bpf_map_lookup_elem(&vip_addrs, key))
        goto pass;
    count(0);
    /* No socket on this queue: the kernel gets it (XDP_PASS as the default action). */
    return (int)bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
pass:
    count(1);
    return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
