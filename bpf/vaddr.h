/* Map layouts shared by the socket hooks and mirrored once in Python
 * (vaddr/maps.py).  Change one, change the other: the runtime refuses a
 * compiled program whose layout version differs from the Python mirror. */
#ifndef VADDR_H
#define VADDR_H

#define VADDR_LAYOUT_VERSION 5

/* Every pin lives under one bpffs folder so that `vaddr reset` finds it. */
#define VADDR_PIN_DIR "/sys/fs/bpf/vaddr"

#define VHOST_HAS_V4 1
#define VHOST_HAS_V6 2
/* The way out: 127.0.0.1 and ::1 in this vhost mean the machine's loopback. */
#define VHOST_HOST_LOOPBACK 4

/* One per vhost, keyed by the id of the vhost's cgroup (its inode number). */
struct vhost {
	__u32 ip4;       /* network byte order */
	__u32 flags;     /* VHOST_HAS_* */
	__u32 ip6[4];    /* network byte order */
	__u32 lo4;       /* its private 127.0.0.1, network byte order */
};

/* Private loopbacks (a vhost's lo4, v4-mapped) -> the vhost's cgroup id. */
#define VADDR_LOOPBACK_NET 0x7f7f0000  /* 127.127.0.0/16, host byte order */

/* Who owns an address: keyed by the address, the value is the cgroup id.
 * IPv4 addresses are stored v4-mapped (::ffff:a.b.c.d) so one map serves both. */
struct addr_key {
	__u32 ip6[4];
};

/* Lab prefixes: destinations in them are "lab" even before a vhost owns them. */
struct lab_prefix {
	__u32 prefixlen;  /* LPM trie convention: bits that count, from the front */
	__u32 ip6[4];     /* IPv4 as v4-mapped, prefixlen + 96 */
};

/* UDP ports of a vhost's own (udp_ports.h): (address, port, direction) ->
 * the other port, host order.  IPv4 as v4-mapped. */
#define PORT_TO_REAL 1     /* the port the program bound -> the one it holds */
#define PORT_TO_VIRTUAL 2  /* and back */
#define PORT_ASKED_ANY 3   /* (vIP, R): the program bound 0.0.0.0 (`ss` shows so) */
struct port_key {
	struct addr_key addr;
	__u16 port;
	__u16 dir;
};

/* ::1 ports of IPV6_V6ONLY sockets (lo6.h): (vhost cgroup id, P, protocol) ->
 * (that id, R), and (0, R, protocol) -> (vhost, P, wild).  Ports in host order. */
struct lo6_key {
	__u64 cgid;
	__u16 port;
	__u16 proto;
	__u32 pad;
};
struct lo6_val {
	__u64 cgid;
	__u32 port;
	__u32 wild;  /* the way back: it asked for [::] */
};

/* Links: one per directed pair of addresses (IPv4 as v4-mapped), read by the
 * tc program on lo (shape.c).  Only pairs with a setting have an entry, so
 * traffic on unset links costs one failed hash lookup. */
struct link_key {
	__u32 src[4];
	__u32 dst[4];
};

#define LINK_PARTITIONED 1

/* skb->mark bit for packets the delay line (vaddr/delayline.c) must hold;
 * an iptables NFQUEUE rule matches it. */
#define VADDR_DELAY_MARK 0x00100000
/* Which of up to four delay lines holds the packet: two mark bits from a hash
 * of the link, so a link's packets (any protocol) meet one timeline, and the
 * rules map the four values onto as many queues as vaddr started. */
#define VADDR_QUEUE_SHIFT 22
#define VADDR_QUEUES_MAX 4
/* On a duplicate made by shape.c, so that it is not duplicated again. */
#define VADDR_DUP_MARK 0x00200000
#define VADDR_DELAY_QUEUE 30305

struct link_cfg {
	__u32 loss;      /* drop probability in units of 2^-32 */
	__u32 flags;     /* LINK_* */
	__u32 delay_us;  /* one way */
	__u32 jitter_us; /* +- around delay_us, never reordering */
	__u64 rate_bps;  /* bits per second, 0: no limit */
	__u32 duplicate; /* probability in units of 2^-32 */
	__u32 corrupt;   /* probability in units of 2^-32 */
};

struct link_stats {
	__u64 packets;   /* passed */
	__u64 bytes;
	__u64 dropped;   /* by loss or partition */
	__u64 dropped_bytes;
	__u64 delayed;   /* handed to the delay line */
};

#endif
