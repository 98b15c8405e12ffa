/* Map layouts shared by the socket hooks and mirrored once in Python
 * (vaddr/maps.py).  Change one, change the other: the runtime refuses a
 * compiled program whose layout version differs from the Python mirror. */
#ifndef VADDR_H
#define VADDR_H

#define VADDR_LAYOUT_VERSION 1

/* Every pin lives under one bpffs folder so that `vaddr reset` finds it. */
#define VADDR_PIN_DIR "/sys/fs/bpf/vaddr"

#define VHOST_HAS_V4 1
#define VHOST_HAS_V6 2

/* One per vhost, keyed by the id of the vhost's cgroup (its inode number). */
struct vhost {
	__u32 ip4;       /* network byte order */
	__u32 flags;     /* VHOST_HAS_* */
	__u32 ip6[4];    /* network byte order */
};

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

/* Per-socket facts learned in the setsockopt hook (bind6 cannot ask the
 * kernel for IPV6_V6ONLY: bpf_getsockopt returns -EINVAL for it). */
struct sock_facts {
	__u32 v6only;
};

#endif
