/* The delay line: holds packets of delayed or rate-limited links until their
 * release time, for kernels without sch_netem (and where sch_fq is missing
 * too, so no earliest-departure-time qdisc can honour skb->tstamp).
 *
 * bpf/shape.c marks such packets on lo's ingress; an iptables NFQUEUE rule in
 * PREROUTING (mangle) hands them here through nfnetlink_queue; we read each
 * packet's addresses from its first bytes, look the link up in the pinned
 * `links` map, and give the verdict NF_ACCEPT at
 *
 *   release = max(start + tx + delay +- jitter, previous release on the link)
 *   start   = max(arrival, link busy until), tx = bytes * 8 / rate
 *
 * so jitter never reorders a link's packets and rate is serialisation time.
 * Queued at ingress, after loopback_xmit orphaned the skb: TCP small queues
 * do not throttle the sender on packets held here.  GSO packets (up to 64 kB
 * on lo) stay whole (NFQA_CFG_F_GSO).  No fail-open: if this process dies,
 * marked packets are dropped, which shows, rather than passed undelayed.
 *
 * Run by `python -m vaddr.delayd` through ctypes: vaddr_delayline_run(). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../bpf/vaddr.h"

#define HEAP_MAX 65536
#define LINKS_MAX 4096  /* power of two */
#define COPY_RANGE 64

struct held {
	uint64_t release;
	uint64_t seq;     /* ties keep arrival order */
	uint32_t id;
};

struct link_state {
	struct link_key key;
	uint64_t busy_until;
	uint64_t last_release;
	int used;
};

static struct held heap[HEAP_MAX];
static size_t heap_n;
static uint64_t seq;
static struct link_state states[LINKS_MAX];
static int links_fd = -1;
static uint16_t queue_num;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int before(const struct held *a, const struct held *b)
{
	return a->release < b->release || (a->release == b->release && a->seq < b->seq);
}

static void heap_push(struct held h)
{
	size_t i = heap_n++;
	while (i && before(&h, &heap[(i - 1) / 2])) {
		heap[i] = heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	heap[i] = h;
}

static struct held heap_pop(void)
{
	struct held top = heap[0], last = heap[--heap_n];
	size_t i = 0;

	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= heap_n)
			break;
		if (c + 1 < heap_n && before(&heap[c + 1], &heap[c]))
			c++;
		if (!before(&heap[c], &last))
			break;
		heap[i] = heap[c];
		i = c;
	}
	if (heap_n)
		heap[i] = last;
	return top;
}

static struct link_state *state_of(const struct link_key *key)
{
	uint32_t h = 2166136261u;
	const uint8_t *p = (const uint8_t *)key;
	size_t i;

	for (i = 0; i < sizeof(*key); i++)
		h = (h ^ p[i]) * 16777619u;
	for (i = 0; i < LINKS_MAX; i++) {
		struct link_state *s = &states[(h + i) & (LINKS_MAX - 1)];
		if (!s->used) {
			s->used = 1;
			s->key = *key;
			return s;
		}
		if (!memcmp(&s->key, key, sizeof(*key)))
			return s;
	}
	return NULL;
}

static int lookup_link(const struct link_key *key, struct link_cfg *cfg)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.map_fd = links_fd;
	attr.key = (uint64_t)(uintptr_t)key;
	attr.value = (uint64_t)(uintptr_t)cfg;
	return syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, sizeof(attr));
}

static int read_key(const uint8_t *pkt, size_t len, struct link_key *key)
{
	memset(key, 0, sizeof(*key));
	if (len >= 20 && (pkt[0] >> 4) == 4) {
		key->src[2] = key->dst[2] = htonl(0xffff);
		memcpy(&key->src[3], pkt + 12, 4);
		memcpy(&key->dst[3], pkt + 16, 4);
		return 0;
	}
	if (len >= 40 && (pkt[0] >> 4) == 6) {
		memcpy(key->src, pkt + 8, 16);
		memcpy(key->dst, pkt + 24, 16);
		return 0;
	}
	return -1;
}

/* Uniform in [-jitter, +jitter]; xorshift, seeded per process. */
static int64_t jitter_sample(uint32_t jitter_us)
{
	static uint64_t x = 88172645463325252ull;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	if (!jitter_us)
		return 0;
	return ((int64_t)(x % (2ull * jitter_us * 1000 + 1))) - (int64_t)jitter_us * 1000;
}

/* Append one netlink message to buf; returns its length. */
static size_t put_msg(char *buf, uint16_t type, uint16_t flags, const void *attrs, size_t attrs_len)
{
	struct nlmsghdr *nlh = (struct nlmsghdr *)buf;
	struct nfgenmsg *nfg = NLMSG_DATA(nlh);

	nlh->nlmsg_len = NLMSG_LENGTH(sizeof(*nfg) + attrs_len);
	nlh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | type;
	nlh->nlmsg_flags = NLM_F_REQUEST | flags;
	nlh->nlmsg_seq = 0;
	nlh->nlmsg_pid = 0;
	nfg->nfgen_family = AF_UNSPEC;
	nfg->version = NFNETLINK_V0;
	nfg->res_id = htons(queue_num);
	memcpy((char *)nfg + sizeof(*nfg), attrs, attrs_len);
	return NLMSG_ALIGN(nlh->nlmsg_len);
}

static size_t put_attr(char *at, uint16_t type, const void *data, size_t len)
{
	struct nlattr *a = (struct nlattr *)at;
	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	memcpy(at + NLA_HDRLEN, data, len);
	return NLA_ALIGN(a->nla_len);
}

static int configure(int fd, uint32_t maxlen)
{
	char attrs[256], buf[512];
	struct nfqnl_msg_config_cmd cmd = {.command = NFQNL_CFG_CMD_BIND};
	struct nfqnl_msg_config_params params = {.copy_range = htonl(COPY_RANGE), .copy_mode = NFQNL_COPY_PACKET};
	uint32_t len_be = htonl(maxlen), flags = htonl(NFQA_CFG_F_GSO), mask = htonl(NFQA_CFG_F_GSO);
	size_t n = 0, m;

	n += put_attr(attrs + n, NFQA_CFG_CMD, &cmd, sizeof(cmd));
	m = put_msg(buf, NFQNL_MSG_CONFIG, 0, attrs, n);
	if (send(fd, buf, m, 0) < 0)
		return -1;
	n = 0;
	n += put_attr(attrs + n, NFQA_CFG_PARAMS, &params, sizeof(params));
	n += put_attr(attrs + n, NFQA_CFG_QUEUE_MAXLEN, &len_be, 4);
	n += put_attr(attrs + n, NFQA_CFG_FLAGS, &flags, 4);
	n += put_attr(attrs + n, NFQA_CFG_MASK, &mask, 4);
	m = put_msg(buf, NFQNL_MSG_CONFIG, 0, attrs, n);
	return send(fd, buf, m, 0) < 0 ? -1 : 0;
}

static char out[64 * 64];
static size_t out_len;

static void verdict(int fd, uint32_t id, uint32_t v)
{
	char attrs[32];
	struct nfqnl_msg_verdict_hdr vh = {.verdict = htonl(v), .id = htonl(id)};
	size_t n = put_attr(attrs, NFQA_VERDICT_HDR, &vh, sizeof(vh));

	if (out_len + 64 > sizeof(out)) {
		send(fd, out, out_len, 0);
		out_len = 0;
	}
	out_len += put_msg(out + out_len, NFQNL_MSG_VERDICT, 0, attrs, n);
}

static void flush_verdicts(int fd)
{
	if (out_len)
		send(fd, out, out_len, 0);
	out_len = 0;
}

static void on_packet(int fd, struct nlmsghdr *nlh, uint64_t now)
{
	struct nlattr *a;
	struct nfqnl_msg_packet_hdr *ph = NULL;
	uint8_t *payload = NULL;
	uint32_t plen = 0, caplen = 0;
	int rem = nlh->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
	struct link_key key;
	struct link_cfg cfg;
	struct link_state *st;
	uint64_t start, tx, release;
	int64_t delay;

	for (a = (struct nlattr *)((char *)NLMSG_DATA(nlh) + sizeof(struct nfgenmsg)); rem >= NLA_HDRLEN &&
	     a->nla_len >= NLA_HDRLEN && a->nla_len <= rem;
	     rem -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len))) {
		switch (a->nla_type & NLA_TYPE_MASK) {
		case NFQA_PACKET_HDR:
			ph = (void *)((char *)a + NLA_HDRLEN);
			break;
		case NFQA_PAYLOAD:
			payload = (uint8_t *)a + NLA_HDRLEN;
			plen = a->nla_len - NLA_HDRLEN;
			break;
		case NFQA_CAP_LEN:
			caplen = ntohl(*(uint32_t *)((char *)a + NLA_HDRLEN));
			break;
		}
	}
	if (!ph)
		return;
	if (!payload || read_key(payload, plen, &key) || lookup_link(&key, &cfg) || !(st = state_of(&key)) ||
	    heap_n >= HEAP_MAX) {
		verdict(fd, ntohl(ph->packet_id), NF_ACCEPT);  /* setting gone: pass */
		return;
	}
	if (!caplen)
		caplen = plen;
	tx = cfg.rate_bps ? (uint64_t)caplen * 8 * 1000000000ull / cfg.rate_bps : 0;
	start = now > st->busy_until ? now : st->busy_until;
	st->busy_until = start + tx;
	delay = (int64_t)cfg.delay_us * 1000 + jitter_sample(cfg.jitter_us);
	release = start + tx + (delay > 0 ? (uint64_t)delay : 0);
	if (release < st->last_release)
		release = st->last_release;
	st->last_release = release;
	heap_push((struct held){.release = release, .seq = seq++, .id = ntohl(ph->packet_id)});
}

long vaddr_delayline_run(int queue, const char *links_pin)
{
	static char buf[1 << 17];
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	int fd, one = 1, size = 32 << 20;
	union bpf_attr attr;

	queue_num = queue;
	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)links_pin;
	links_fd = syscall(SYS_bpf, BPF_OBJ_GET, &attr, sizeof(attr));
	if (links_fd < 0)
		return -errno;
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
	setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
	if (configure(fd, HEAP_MAX) < 0)
		return -errno;
	for (;;) {
		uint64_t now = now_ns();
		int timeout = -1;
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		ssize_t n;

		while (heap_n && heap[0].release <= now)
			verdict(fd, heap_pop().id, NF_ACCEPT);
		flush_verdicts(fd);
		if (heap_n) {
			struct timespec ts = {.tv_sec = (heap[0].release - now) / 1000000000ull,
					      .tv_nsec = (heap[0].release - now) % 1000000000ull};
			if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
				return -errno;
		} else if (poll(&pfd, 1, timeout) < 0 && errno != EINTR) {
			return -errno;
		}
		while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
			struct nlmsghdr *nlh;
			int len = n;
			now = now_ns();
			for (nlh = (struct nlmsghdr *)buf; NLMSG_OK(nlh, len); nlh = NLMSG_NEXT(nlh, len))
				if ((nlh->nlmsg_type & 0xff) == NFQNL_MSG_PACKET)
					on_packet(fd, nlh, now);
		}
	}
}
