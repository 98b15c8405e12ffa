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
 * A link's settings are cached until vaddr bumps the links_gen map.  Verdicts
 * go back in batches: one "accept all up to id N" for the run of released
 * packets at the head of the arrival order, one each for the rest.  Several
 * delay lines may run, one per queue; shape.c's mark picks the queue by link.
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
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../bpf/vaddr.h"

#define HEAP_MAX 65536
#define STATES (1u << 18)  /* power of two; twice the links map's size */
#define FIFO_MAX (1u << 18)
#define NO_POS UINT64_MAX
#define DUE_MAX 1024
#define COPY_RANGE 64

struct held {
	uint64_t release;
	uint64_t seq;     /* ties keep arrival order */
	uint64_t pos;     /* place in the arrival fifo, or NO_POS */
	uint32_t id;
};

/* A link's timeline and its settings, read from the map once per generation
 * (links_gen, bumped by vaddr after every change) rather than per packet. */
struct link_state {
	struct link_key key;
	struct link_cfg cfg;
	uint64_t cfg_gen;
	uint64_t busy_until;
	uint64_t last_release;
	uint8_t used, have_cfg;
};

/* Held packets in arrival (= packet id) order.  A batch verdict accepts every
 * queued id up to N, so it is sent only for a run of released packets at the
 * head of this fifo, and only while every held packet is in it (`unbatched`
 * counts those that found it full). */
struct arrival {
	uint32_t id;
	uint8_t released;
};

static struct held heap[HEAP_MAX];
static size_t heap_n;
static uint64_t seq;
static struct link_state *states;
static size_t states_used;
static struct arrival fifo[FIFO_MAX];
static uint64_t fifo_head, fifo_tail;
static size_t unbatched;
static int links_fd = -1, gen_fd = -1;
static uint64_t links_gen;
static volatile uint64_t *gen_mem;  /* links_gen's one value, mapped */
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

static struct link_state *slot_of(const struct link_key *key)
{
	uint32_t h = 2166136261u;
	const uint8_t *p = (const uint8_t *)key;
	size_t i;

	for (i = 0; i < sizeof(*key); i++)
		h = (h ^ p[i]) * 16777619u;
	for (i = 0; i < STATES; i++) {
		struct link_state *s = &states[(h + i) & (STATES - 1)];
		if (!s->used || !memcmp(&s->key, key, sizeof(*key)))
			return s;
	}
	return NULL;
}

/* Links come and go over a long run: when the table is 3/4 full, keep only
 * the links with packets still ahead of them (an idle link's timeline is in
 * the past, so forgetting it changes nothing). */
static void forget_idle(uint64_t now)
{
	struct link_state *live = malloc(sizeof(*live) * STATES);
	size_t n = 0, i;

	if (!live)
		return;
	for (i = 0; i < STATES; i++)
		if (states[i].used && states[i].last_release > now)
			live[n++] = states[i];
	memset(states, 0, sizeof(*states) * STATES);
	for (i = 0; i < n; i++)
		*slot_of(&live[i].key) = live[i];
	states_used = n;
	free(live);
}

static struct link_state *state_of(const struct link_key *key, uint64_t now)
{
	struct link_state *s;

	if (states_used >= STATES / 4 * 3)
		forget_idle(now);
	s = slot_of(key);
	if (s && !s->used) {
		memset(s, 0, sizeof(*s));
		s->used = 1;
		s->key = *key;
		states_used++;
	}
	return s;
}

static int map_lookup(int fd, const void *key, void *value)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.map_fd = fd;
	attr.key = (uint64_t)(uintptr_t)key;
	attr.value = (uint64_t)(uintptr_t)value;
	return syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, sizeof(attr));
}

/* The link's settings, from the map only when they may have changed.  Without
 * the generation map (pinned by an older vaddr), every packet reads them. */
static int cfg_of(struct link_state *st)
{
	if (gen_fd >= 0 && st->have_cfg && st->cfg_gen == links_gen)
		return 0;
	if (map_lookup(links_fd, &st->key, &st->cfg))
		return -1;
	st->have_cfg = 1;
	st->cfg_gen = links_gen;
	return 0;
}

static void read_gen(void)
{
	uint32_t zero = 0;

	if (gen_mem)
		links_gen = *gen_mem;
	else if (gen_fd >= 0 && map_lookup(gen_fd, &zero, &links_gen))
		links_gen = ~0ull;  /* unreadable: a value no state holds, so all re-read */
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

static void verdict(int fd, uint16_t type, uint32_t id, uint32_t v)
{
	char attrs[32];
	struct nfqnl_msg_verdict_hdr vh = {.verdict = htonl(v), .id = htonl(id)};
	size_t n = put_attr(attrs, NFQA_VERDICT_HDR, &vh, sizeof(vh));

	if (out_len + 64 > sizeof(out)) {
		send(fd, out, out_len, 0);
		out_len = 0;
	}
	out_len += put_msg(out + out_len, type, 0, attrs, n);
}

static void flush_verdicts(int fd)
{
	if (out_len)
		send(fd, out, out_len, 0);
	out_len = 0;
}

static void hold(uint32_t id, uint64_t release)
{
	struct held h = {.release = release, .seq = seq++, .id = id, .pos = NO_POS};

	if (fifo_tail - fifo_head < FIFO_MAX) {
		h.pos = fifo_tail++;
		fifo[h.pos & (FIFO_MAX - 1)] = (struct arrival){.id = id};
	} else {
		unbatched++;
	}
	heap_push(h);
}

static void on_packet(int fd, struct nlmsghdr *nlh, uint64_t now)
{
	struct nlattr *a;
	struct nfqnl_msg_packet_hdr *ph = NULL;
	uint8_t *payload = NULL;
	uint32_t plen = 0, caplen = 0;
	int rem = nlh->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
	struct link_key key;
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
	if (!payload || read_key(payload, plen, &key) || heap_n >= HEAP_MAX) {
		verdict(fd, NFQNL_MSG_VERDICT, ntohl(ph->packet_id), NF_ACCEPT);
		return;
	}
	st = state_of(&key, now);
	if (!st) {  /* unreachable while links are fewer than STATES: shows as loss */
		verdict(fd, NFQNL_MSG_VERDICT, ntohl(ph->packet_id), NF_DROP);
		return;
	}
	if (cfg_of(st)) {  /* the setting is gone: pass */
		verdict(fd, NFQNL_MSG_VERDICT, ntohl(ph->packet_id), NF_ACCEPT);
		return;
	}
	if (!caplen)
		caplen = plen;
	tx = st->cfg.rate_bps ? (uint64_t)caplen * 8 * 1000000000ull / st->cfg.rate_bps : 0;
	start = now > st->busy_until ? now : st->busy_until;
	st->busy_until = start + tx;
	delay = (int64_t)st->cfg.delay_us * 1000 + jitter_sample(st->cfg.jitter_us);
	release = start + tx + (delay > 0 ? (uint64_t)delay : 0);
	if (release < st->last_release)
		release = st->last_release;
	st->last_release = release;
	hold(ntohl(ph->packet_id), release);
}

/* Accept what is due: one batch verdict for the released run at the fifo's
 * head, sent first (a link's packets leave in arrival order), then one
 * verdict each for packets released ahead of an older one still held. */
static void release_due(int fd, uint64_t now)
{
	static struct held due[DUE_MAX];
	size_t n, i;
	uint32_t max_id = 0;
	int batch;

	do {
		batch = 0;
		for (n = 0; n < DUE_MAX && heap_n && heap[0].release <= now; n++) {
			due[n] = heap_pop();
			if (due[n].pos == NO_POS)
				unbatched--;
			else
				fifo[due[n].pos & (FIFO_MAX - 1)].released = 1;
		}
		while (fifo_head < fifo_tail && fifo[fifo_head & (FIFO_MAX - 1)].released) {
			max_id = fifo[fifo_head & (FIFO_MAX - 1)].id;
			fifo_head++;
			batch = 1;
		}
		batch = batch && !unbatched;
		if (batch)
			verdict(fd, NFQNL_MSG_VERDICT_BATCH, max_id, NF_ACCEPT);
		for (i = 0; i < n; i++)
			if (!batch || due[i].pos == NO_POS || due[i].pos >= fifo_head)
				verdict(fd, NFQNL_MSG_VERDICT, due[i].id, NF_ACCEPT);
	} while (n == DUE_MAX);
	flush_verdicts(fd);
}

static int open_pin(const char *path)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)path;
	return syscall(SYS_bpf, BPF_OBJ_GET, &attr, sizeof(attr));
}

/* Packets read per system call: one recvmmsg takes what has queued up since
 * the last wake (each nfqueue packet is its own netlink message, which a
 * plain recv returns one at a time), so under load the reads, the polls and
 * the verdict sends all come in batches rather than three calls a packet. */
#define READ_BATCH 256
#define READ_SLOT 1024  /* a packet message: headers, 64 copied bytes, attrs */

long vaddr_delayline_run(int queue, const char *links_pin, const char *gen_pin)
{
	static char bufs[READ_BATCH][READ_SLOT];
	static struct iovec iov[READ_BATCH];
	static struct mmsghdr msgs[READ_BATCH];
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	int fd, one = 1, size = 32 << 20, more = 0, i;

	queue_num = queue;
	states = calloc(STATES, sizeof(*states));
	if (!states)
		return -ENOMEM;
	links_fd = open_pin(links_pin);
	if (links_fd < 0)
		return -errno;
	gen_fd = open_pin(gen_pin);
	if (gen_fd >= 0) {
		void *m = mmap(NULL, sysconf(_SC_PAGESIZE), PROT_READ, MAP_SHARED, gen_fd, 0);
		gen_mem = m == MAP_FAILED ? NULL : m;
	}
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
	setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
	if (configure(fd, HEAP_MAX) < 0)
		return -errno;
	for (i = 0; i < READ_BATCH; i++) {
		iov[i] = (struct iovec){bufs[i], READ_SLOT};
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	for (;;) {
		uint64_t now = now_ns();
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int n;

		release_due(fd, now);
		/* A full batch last time means more is waiting: read, don't poll. */
		if (more)
			;
		else if (heap_n) {
			struct timespec ts = {.tv_sec = (heap[0].release - now) / 1000000000ull,
					      .tv_nsec = (heap[0].release - now) % 1000000000ull};
			if (ppoll(&pfd, 1, &ts, NULL) < 0 && errno != EINTR)
				return -errno;
		} else if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			return -errno;
		read_gen();
		n = recvmmsg(fd, msgs, READ_BATCH, MSG_DONTWAIT, NULL);
		more = n == READ_BATCH;
		if (n <= 0)
			continue;
		now = now_ns();
		for (i = 0; i < n; i++) {
			struct nlmsghdr *nlh = (struct nlmsghdr *)bufs[i];
			int len = msgs[i].msg_len;
			for (; NLMSG_OK(nlh, len); nlh = NLMSG_NEXT(nlh, len))
				if ((nlh->nlmsg_type & 0xff) == NFQNL_MSG_PACKET)
					on_packet(fd, nlh, now);
		}
		flush_verdicts(fd);  /* the immediate ones */
	}
}
