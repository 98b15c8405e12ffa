/* Link impairments between vhosts, on lo's ingress (tc clsact, direct action).
 *
 * Every packet between lab addresses crosses lo once: loopback_xmit hands it
 * to netif_rx, and the ingress hook runs before the stack sees it.  Dropping
 * there is silent to the sender, as loss on a real network is (an egress drop
 * would return NET_XMIT_DROP to the sending socket), and happens after the
 * skb was orphaned, so the sender's socket memory is not held.
 *
 * Compiled by bcc with the socket hooks' header; maps pinned beside theirs. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include "vaddr.h"

/* Room for 100,000 directed links (a 362-host full mesh), paid for per
 * entry in use, not up front (vaddr/maps.py LIMITS says the same). */
BPF_TABLE_PINNED("hash", struct link_key, struct link_cfg, links, 131072, VADDR_PIN_DIR "/links",
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct link_key, struct link_stats, link_stats, 131072, VADDR_PIN_DIR "/link_stats",
		 BPF_F_NO_PREALLOC);
/* Bumped by vaddr after each change to `links`: the delay line re-reads a
 * link's settings only then, not once per packet.  Mapped into the delay
 * line's memory, so reading it costs no system call. */
BPF_TABLE_PINNED("array", __u32, __u64, links_gen, 1, VADDR_PIN_DIR "/links_gen", BPF_F_MMAPABLE);

#ifdef VADDR_EDT
/* Departure times (EDT), where the kernel has bpf_skb_set_tstamp (5.18+),
 * ifb and sch_fq: a delayed packet gets its release time here and goes on
 * to the next filter, whose mirred action hands it to the ifb device
 * vaddr-edt; fq there holds it until that time, and ifb puts it back into
 * lo's receive path, past tc.  No process touches it.  The packet was
 * orphaned by loopback_xmit, so a held one charges no sender's buffer, as
 * on a real wire.  edt_on[0] is set by vaddr once the device is ready;
 * until then (or when it could not be made) the delay line's mark is used.
 * A link's clock: busy until free_ns (rate), last release last_ns (order). */
struct link_clock {
	struct bpf_spin_lock lock;
	__u64 free_ns;
	__u64 last_ns;
};
BPF_TABLE_PINNED("hash", struct link_key, struct link_clock, link_clocks, 131072, VADDR_PIN_DIR "/link_clocks",
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, __u32, edt_on, 1, VADDR_PIN_DIR "/edt_on");

/* The delay line's rule (vaddr/delayline.c), in the kernel:
 *   release = max(start + tx + delay +- jitter, the link's previous release)
 *   start   = max(arrival, link busy until),  tx = IP bytes * 8 / rate */
static __always_inline int depart(struct __sk_buff *skb, struct link_key *key, struct link_cfg *cfg)
{
	struct link_clock zero = {}, *clk;
	__u64 now = bpf_ktime_get_ns(), start, tx, release;
	__s64 delay = (__s64)cfg->delay_us * 1000;
	__u32 len = skb->len > ETH_HLEN ? skb->len - ETH_HLEN : 0;

	if (cfg->jitter_us) {
		__u64 span = 2ull * cfg->jitter_us * 1000 + 1;

		delay += (__s64)(bpf_get_prandom_u32() % span) - (__s64)cfg->jitter_us * 1000;
	}
	tx = cfg->rate_bps ? (__u64)len * 8 * 1000000000ull / cfg->rate_bps : 0;
	clk = link_clocks.lookup_or_try_init(key, &zero);
	if (!clk)
		return -1;  /* the map is full: the delay line takes it */
	bpf_spin_lock(&clk->lock);
	start = clk->free_ns > now ? clk->free_ns : now;
	clk->free_ns = start + tx;
	release = start + tx + (delay > 0 ? (__u64)delay : 0);
	if (release < clk->last_ns)
		release = clk->last_ns;
	clk->last_ns = release;
	bpf_spin_unlock(&clk->lock);
	return bpf_skb_set_tstamp(skb, release, BPF_SKB_TSTAMP_DELIVERY_MONO);
}

static __always_inline int edt_ready(void)
{
	__u32 zero = 0, *on = edt_on.lookup(&zero);

	return on && *on;
}
#endif

/* Offsets in the IPv4 and IPv6 headers, after lo's Ethernet header. */
#define IP4_SADDR (ETH_HLEN + 12)
#define IP6_SADDR (ETH_HLEN + 8)

static __always_inline int read_pair(struct __sk_buff *skb, struct link_key *key)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u32 addrs[2];

		if (bpf_skb_load_bytes(skb, IP4_SADDR, addrs, sizeof(addrs)) < 0)
			return -1;
		key->src[2] = key->dst[2] = bpf_htonl(0xffff);
		key->src[3] = addrs[0];
		key->dst[3] = addrs[1];
		return 0;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return bpf_skb_load_bytes(skb, IP6_SADDR, key, sizeof(*key));
	return -1;
}

static __always_inline void count(struct link_key *key, __u32 len, int dropped)
{
	struct link_stats zero = {}, *st;

	st = link_stats.lookup_or_try_init(key, &zero);
	if (!st)
		return;
	if (dropped) {
		__sync_fetch_and_add(&st->dropped, 1);
		__sync_fetch_and_add(&st->dropped_bytes, len);
	} else {
		__sync_fetch_and_add(&st->packets, 1);
		__sync_fetch_and_add(&st->bytes, len);
	}
}

static __always_inline __u32 queue_of(const struct link_key *key)
{
	__u32 h = key->src[0] ^ key->src[1] ^ key->src[2] ^ key->src[3] ^
		  key->dst[0] ^ key->dst[1] ^ key->dst[2] ^ key->dst[3];

	h ^= h >> 16;
	h ^= h >> 8;
	return (h & (VADDR_QUEUES_MAX - 1)) << VADDR_QUEUE_SHIFT;
}

static __always_inline int chance(__u32 probability)
{
	return probability && bpf_get_prandom_u32() < probability;
}

int vaddr_shape(struct __sk_buff *skb)
{
	struct link_key key = {};
	struct link_cfg *cfg;

	if (read_pair(skb, &key) < 0)
		return TC_ACT_OK;
	cfg = links.lookup(&key);
	if (!cfg)
		return TC_ACT_OK;
	/* Corruption: on a real link the receiver's checksum discards a damaged
	 * packet.  lo never verifies checksums (CHECKSUM_PARTIAL), so a flipped
	 * bit would reach the application instead: drop it here, in its place. */
	if ((cfg->flags & LINK_PARTITIONED) || chance(cfg->loss) || chance(cfg->corrupt)) {
		count(&key, skb->len, 1);
		return TC_ACT_SHOT;
	}
	count(&key, skb->len, 0);
	if (cfg->delay_us || cfg->jitter_us || cfg->rate_bps) {
		struct link_stats *st = link_stats.lookup(&key);
		if (st)
			__sync_fetch_and_add(&st->delayed, 1);
#ifdef VADDR_EDT
		if (edt_ready() && depart(skb, &key, cfg) == 0)
			return TC_ACT_UNSPEC;  /* on to vaddr_edt_take */
#endif
		skb->mark |= VADDR_DELAY_MARK | queue_of(&key);
	}
	return TC_ACT_OK;
}

#ifdef VADDR_EDT
/* The filter after vaddr_shape on lo's ingress, in classifier mode with a
 * mirred redirect to vaddr-edt: only packets given a departure time reach
 * it (vaddr_shape ends the others' classification).  A bpf_redirect would
 * not do: ifb takes only skbs that mirred marked as redirected. */
int vaddr_edt_take(struct __sk_buff *skb)
{
	return -1;  /* the filter's own class: run its action */
}
#endif

/* Duplication, on lo's egress: a copy sent from there keeps the skb's route,
 * while one redirected into ingress has it scrubbed, is routed afresh, and is
 * dropped as a martian (a local source arriving from outside).  The copy is
 * marked so that it is not copied again; on ingress, vaddr_shape loses or
 * delays it on its own, like any packet. */
int vaddr_duplicate(struct __sk_buff *skb)
{
	struct link_key key = {};
	struct link_cfg *cfg;

	if (skb->mark & VADDR_DUP_MARK || read_pair(skb, &key) < 0)
		return TC_ACT_OK;
	cfg = links.lookup(&key);
	if (cfg && chance(cfg->duplicate)) {
		skb->mark |= VADDR_DUP_MARK;
		bpf_clone_redirect(skb, skb->ifindex, 0);
		skb->mark &= ~VADDR_DUP_MARK;
	}
	return TC_ACT_OK;
}
