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
		skb->mark |= VADDR_DELAY_MARK | queue_of(&key);
	}
	return TC_ACT_OK;
}

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
