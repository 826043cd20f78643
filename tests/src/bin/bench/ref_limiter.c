// K1's reference: a minimal hand-written TC rate limiter, the floor a real
// limiter cannot go under. Parse Ethernet/IPv4/TCP by direct access, check the
// destination port, tell a request by its first payload bytes, one LRU lookup
// of the client (16-byte key, as api-guard's), GCRA on the client's clock cell
// with a compare-and-swap, one per-CPU counter. IPv4 only, no options beyond
// the IHL, no lists, no stream accounting, no sampling.
//
// Built by the bench: clang-22 -O2 -g -target bpf -mcpu=v3 [-DCOARSE_CLOCK]
// (COARSE_CLOCK: bpf_ktime_get_coarse_ns instead of bpf_ktime_get_ns).

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_LRU_HASH 9
#define BPF_NOEXIST 1
#define TC_ACT_PIPE 3
#define TC_ACT_SHOT 2

// The fields of struct __sk_buff this program reads (offsets 76 and 80).
struct __sk_buff {
    __u32 pad[19];
    __u32 data;
    __u32 data_end;
};

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value,
                                   __u64 flags) = (void *)2;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_ktime_get_coarse_ns)(void) = (void *)160;

#ifdef COARSE_CLOCK
#define NOW() bpf_ktime_get_coarse_ns()
#else
#define NOW() bpf_ktime_get_ns()
#endif

#define PORT 8080
// 1,000,000 requests a second, bursts of 1,000,000: admits all the bench sends.
#define INTERVAL_NS 1000ULL
#define BURST_NS (INTERVAL_NS * 1000000ULL)

struct client_key {
    __u8 addr[16];
};

struct client_state {
    __u64 tat_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct client_key);
    __type(value, struct client_state);
} REF_CLIENTS SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 4);
    __type(key, __u32);
    __type(value, __u64);
} REF_COUNTERS SEC(".maps");

enum { PASSED = 0, ALLOWED = 1, LIMITED = 2 };

static __attribute__((always_inline)) int count(__u32 slot, int action)
{
    __u64 *c = bpf_map_lookup_elem(&REF_COUNTERS, &slot);
    if (c)
        *c += 1;
    return action;
}

SEC("classifier")
int ref_limiter(struct __sk_buff *skb)
{
    __u8 *data = (__u8 *)(long)skb->data;
    __u8 *end = (__u8 *)(long)skb->data_end;
    if (data + 14 + 20 > end)
        return count(PASSED, TC_ACT_PIPE);
    if (data[12] != 0x08 || data[13] != 0x00)
        return count(PASSED, TC_ACT_PIPE);
    __u8 *ip = data + 14;
    if (ip[9] != 6)
        return count(PASSED, TC_ACT_PIPE);
    __u32 ihl = (ip[0] & 0x0f) * 4;
    if (ihl < 20)
        return count(PASSED, TC_ACT_PIPE);
    __u8 *tcp = ip + ihl;
    if (tcp + 20 > end)
        return count(PASSED, TC_ACT_PIPE);
    if (((tcp[2] << 8) | tcp[3]) != PORT)
        return count(PASSED, TC_ACT_PIPE);
    __u8 *payload = tcp + (tcp[12] >> 4) * 4;
    // A request starts with a method token: GET, POST, PUT, DELETE, HEAD, ...
    if (payload + 4 > end || payload[0] < 'A' || payload[0] > 'Z')
        return count(PASSED, TC_ACT_PIPE);

    struct client_key key = {};
    key.addr[10] = 0xff;
    key.addr[11] = 0xff;
    __builtin_memcpy(&key.addr[12], ip + 12, 4);
    __u64 now = NOW();
    struct client_state *st = bpf_map_lookup_elem(&REF_CLIENTS, &key);
    if (!st) {
        struct client_state fresh = {};
        bpf_map_update_elem(&REF_CLIENTS, &key, &fresh, BPF_NOEXIST);
        st = bpf_map_lookup_elem(&REF_CLIENTS, &key);
        if (!st)
            return count(PASSED, TC_ACT_PIPE);
    }
    // GCRA: admit if the theoretical arrival time is within the burst.
    for (int i = 0; i < 4; i++) {
        __u64 tat = st->tat_ns;
        __u64 base = tat > now ? tat : now;
        __u64 next = base + INTERVAL_NS;
        if (next > now + BURST_NS)
            return count(LIMITED, TC_ACT_SHOT);
        if (__sync_val_compare_and_swap(&st->tat_ns, tat, next) == tat)
            return count(ALLOWED, TC_ACT_PIPE);
    }
    return count(LIMITED, TC_ACT_SHOT);
}

char LICENSE[] SEC("license") = "GPL";
