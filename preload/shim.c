/* The LD_PRELOAD shim: gives a dynamically linked program a virtual IPv4
 * address without root.  Each vIP stands for a distinct real address in
 * 127.0.0.0/8 (see translate.h); calls that choose or reveal addresses are
 * translated both ways, so the program only ever sees vIPs.  Ports below
 * 1024, which an unprivileged process cannot bind, travel as high ports on
 * the real address (low_port_swap), so a daemon listens on 22 or 53.
 *
 *   VADDR_VIP   this process's IPv4 vIP; unset or empty when it has none
 *   VADDR_VIP6  its IPv6 vIP, carried as ::ffff:REAL on IPv6 sockets (REAL
 *               a 127/8 address of its own); neither set: a lab client
 *   VADDR_MAP   the map file, "VIP REAL" lines, written by `vaddr`
 *   VADDR_MEMBER_FD  the descriptor that makes it a member (member.c)
 *   LD_PRELOAD  names this library; all five are put back into the
 *               environment of exec'd children that dropped them
 *
 * Fail closed: a vhost process never uses the machine's own addresses.  When
 * its vIP has left the map (the vhost was removed), binds and connects fail
 * with EADDRNOTAVAIL; an exec of what the shim cannot enter (a static or Go
 * executable) fails with EACCES.  Each says why in one line on stderr.
 *
 * Real functions are resolved once (pthread_once) with dlsym(RTLD_NEXT).
 * Every wrapper leaves errno as the real call set it: the shim's own work
 * (stat of the map, getsockname, ...) never shows through.
 * The decisions themselves (map parsing, sockaddr layout, environments) are
 * pure functions in translate.c; this file is the glue to libc. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loopback.h"
#include "member.h"
#include "shim.h"
#include "translate.h"

#define EXPORT __attribute__((visibility("default")))

/* Kernel cap on the vector of sendmmsg/recvmmsg (UIO_MAXIOV): longer
 * vectors are cut to this by the kernel itself. */
#define MMSG_MAX 1024
#define MMSG_ON_STACK 64

extern char **environ;

/* ---- the real functions ------------------------------------------------- */

static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
static int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
static int (*real_getifaddrs)(struct ifaddrs **);
static void (*real_freeifaddrs)(struct ifaddrs *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vmap map;          /* under map_lock */
static struct stat map_stat;     /* of the file `map` came from */
static struct timespec last_check;
uint32_t own_vip;                /* shared with exec.c and names.c */
struct in6_addr own_vip6;
int has_vip6, in_vhost;
static char *map_path;           /* read once: daemons such as nginx replace environ */
static int host_interfaces;      /* --host-interfaces: getifaddrs as the machine's */
static char *saved_env[6];       /* "NAME=value" to put back into children */
static char *shim_file;          /* this library's path, as ld.so loaded it */

/* RTLD_NEXT searches the objects after this one, so a wrapper never
 * resolves to itself, even when LD_PRELOAD names the shim twice. */
static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static char *save_var(const char *name)
{
	const char *value = getenv(name);
	size_t n;
	char *entry;

	if (!value)
		return NULL;
	n = strlen(name) + strlen(value) + 2;
	entry = malloc(n);
	if (entry) {
		strcpy(entry, name);
		strcat(entry, "=");
		strcat(entry, value);
	}
	return entry;
}

/* A fork while another thread re-reads the map would leave the child a lock
 * held forever and a half-swapped map: hold the lock across fork. */
static void before_fork(void)
{
	pthread_mutex_lock(&map_lock);
}

static void after_fork(void)
{
	pthread_mutex_unlock(&map_lock);
}

static void init(void)
{
	const char *vip = getenv("VADDR_VIP"), *vip6 = getenv("VADDR_VIP6");
	struct in_addr a;
	Dl_info self;
	int saved = errno;

	host_interfaces = getenv("VADDR_HOST_INTERFACES") != NULL;

	real_bind = next("bind");
	real_connect = next("connect");
	real_getsockname = next("getsockname");
	real_getpeername = next("getpeername");
	real_accept = next("accept");
	real_accept4 = next("accept4");
	real_sendto = next("sendto");
	real_sendmsg = next("sendmsg");
	real_sendmmsg = next("sendmmsg");
	real_recvfrom = next("recvfrom");
	real_recvfrom_chk = next("__recvfrom_chk");
	real_recvmsg = next("recvmsg");
	real_recvmmsg = next("recvmmsg");
	real_getifaddrs = next("getifaddrs");
	real_freeifaddrs = next("freeifaddrs");
	if (vip && *vip && inet_pton(AF_INET, vip, &a) == 1)
		own_vip = a.s_addr;
	if (vip6 && *vip6 && inet_pton(AF_INET6, vip6, &own_vip6) == 1)
		has_vip6 = 1;
	in_vhost = own_vip || has_vip6;
	if (getenv("VADDR_MAP") && *getenv("VADDR_MAP"))
		map_path = strdup(getenv("VADDR_MAP"));
	saved_env[0] = save_var("LD_PRELOAD");
	saved_env[1] = save_var("VADDR_MAP");
	saved_env[2] = save_var("VADDR_VIP");
	saved_env[4] = save_var("VADDR_VIP6");
	saved_env[5] = save_var("VADDR_LOOPBACK");
	if (in_vhost)
		lo_init(getenv("VADDR_LOOPBACK"));
	if (in_vhost && map_path)
		member_init(map_path, own_vip ? vip : vip6);  /* the file is named for the first address */
	if (dladdr((void *)init, &self) && self.dli_fname && strchr(self.dli_fname, '/'))
		shim_file = strdup(self.dli_fname);
	pthread_atfork(before_fork, after_fork, after_fork);
	errno = saved;
}

__attribute__((constructor)) static void shim_constructor(void)
{
	pthread_once(&once, init);
}

/* ---- the map file ------------------------------------------------------- */

#define RECHECK_NS 10000000L  /* 10 ms */

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static int checked_recently(void)
{
	struct timespec now;
	long elapsed;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	elapsed = (now.tv_sec - last_check.tv_sec) * 1000000000L + now.tv_nsec - last_check.tv_nsec;
	if (elapsed >= 0 && elapsed < RECHECK_NS && (last_check.tv_sec || last_check.tv_nsec))
		return 1;
	last_check = now;
	return 0;
}

/* The whole file, read under a shared flock so that a writer appending
 * under LOCK_EX is never seen half-way.  *st is what was read. */
static char *read_map_file(const char *path, struct stat *st, size_t *len)
{
	char *text = NULL;
	size_t got = 0;
	ssize_t r = 1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	flock(fd, LOCK_SH);
	if (fstat(fd, st) == 0 && (text = malloc(st->st_size + 1)) != NULL) {
		while (got < (size_t)st->st_size && (r = read(fd, text + got, st->st_size - got)) > 0)
			got += r;
		if (r < 0) {
			free(text);
			text = NULL;
		}
	}
	flock(fd, LOCK_UN);
	close(fd);
	*len = got;
	return text;
}

/* Re-read the map when the file changed: its inode (vaddr replaces it by
 * rename), size or mtime (a line appended).  The file is looked at once per
 * RECHECK_NS, or at once when `force` says a lookup just missed: a stat()
 * per call would cost more than the call itself.  Caller holds map_lock. */
static void refresh_map(int force)
{
	struct stat st;
	struct vmap fresh;
	size_t len;
	char *text;

	if ((!force && checked_recently()) || !map_path || stat(map_path, &st) != 0)
		return;
	if (map_stat.st_ino && same_file(&st, &map_stat))
		return;
	text = read_map_file(map_path, &st, &len);
	if (text && vmap_parse(&fresh, text, len) == 0) {
		vmap_free(&map);
		map = fresh;
		map_stat = st;
	}
	free(text);
}

/* vIP (IPv4 as ::ffff:a.b.c.d) -> real, 0 when it is not a vIP.  A miss
 * looks at the file again: the vIP may belong to a vhost made a moment ago. */
static uint32_t real_of6(const struct in6_addr *vip)
{
	uint32_t real;
	int saved = errno;

	pthread_mutex_lock(&map_lock);
	refresh_map(0);
	real = vmap_real_of6(&map, vip);
	if (!real) {
		refresh_map(1);
		real = vmap_real_of6(&map, vip);
	}
	pthread_mutex_unlock(&map_lock);
	errno = saved;
	return real;
}

static uint32_t real_of(uint32_t vip)
{
	struct in6_addr mapped = {.s6_addr16 = {0, 0, 0, 0, 0, 0xffff}};

	mapped.s6_addr32[3] = vip;
	return real_of6(&mapped);
}

/* The real address standing for the vIP in sa (IPv4, v4-mapped or IPv6),
 * 0 when sa holds no vIP.  *v6 says whether it was an IPv6 vIP. */
static uint32_t real_of_sa(const struct sockaddr *sa, socklen_t len, int *v6)
{
	uint32_t *v4 = sockaddr_v4(sa, len);

	*v6 = 0;
	if (v4)
		return real_of(*v4);
	if (sa && len >= (socklen_t)sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6) {
		*v6 = 1;
		return real_of6(&((const struct sockaddr_in6 *)sa)->sin6_addr);
	}
	return 0;
}

static int is_loopback_not_host(uint32_t addr)
{
	return (ntohl(addr) >> 24) == 127 && addr != htonl(INADDR_LOOPBACK);
}

/* real -> vIP (an IPv4 one as ::ffff:a.b.c.d) in *vip; 0 when real stands
 * for none.  Only a loopback address other than 127.0.0.1 can be a real
 * address we have not heard of yet; others need no second look. */
static int vip_of(uint32_t real, struct in6_addr *vip)
{
	const struct vmap_entry *e;
	int saved = errno;

	pthread_mutex_lock(&map_lock);
	refresh_map(0);
	e = vmap_entry_of_real(&map, real);
	if (!e && is_loopback_not_host(real)) {
		refresh_map(1);
		e = vmap_entry_of_real(&map, real);
	}
	if (e)
		*vip = e->vip;
	pthread_mutex_unlock(&map_lock);
	errno = saved;
	return e != NULL;
}

/* ---- failing closed ----------------------------------------------------- */

static int said_gone;

/* Whether this process is in a vhost whose vIP has left the map: then any
 * address it would get is the machine's own, so the call must fail. */
static int vhost_gone(void)
{
	char text[INET6_ADDRSTRLEN];

	if ((!own_vip || real_of(own_vip)) && (!has_vip6 || real_of6(&own_vip6)))
		return 0;
	if (!__atomic_exchange_n(&said_gone, 1, __ATOMIC_RELAXED) &&
	    (own_vip ? inet_ntop(AF_INET, &own_vip, text, sizeof(text)) : inet_ntop(AF_INET6, &own_vip6, text, sizeof(text))))
		dprintf(2, "vaddr: vhost address %s is no longer in the map (the vhost was removed): "
			"refusing to use the machine's own addresses (fix: start it again with vaddr spawn)\n", text);
	errno = EADDRNOTAVAIL;
	return 1;
}

static int is_inet(const struct sockaddr *addr, socklen_t len)
{
	return addr && len >= sizeof(sa_family_t) && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6);
}

/* ---- translating socket addresses --------------------------------------- */

/* Rewrite an address the kernel returned from real to virtual, in place.
 * `cap` is the buffer the caller gave; the kernel reports the address's full
 * length in *len even when it cut the copy to cap, so only what fits in both
 * may be looked at. */
static void reveal(struct sockaddr *sa, socklen_t cap, const socklen_t *len)
{
	struct in6_addr vip;
	uint32_t *v4;
	uint16_t *port;

	if (!sa || !len || !(v4 = sockaddr_v4(sa, *len < cap ? *len : cap)) || !vip_of(*v4, &vip))
		return;
	if (IN6_IS_ADDR_V4MAPPED(&vip))
		*v4 = vip.s6_addr32[3];
	else if (sa->sa_family == AF_INET6)  /* an IPv6 vIP, on the IPv6 socket that carries it */
		((struct sockaddr_in6 *)sa)->sin6_addr = vip;
	else
		return;  /* an IPv6 vIP's real address on an IPv4 socket: no IPv4 vIP to show */
	port = sockaddr_port(sa, *len < cap ? *len : cap);
	*port = low_port_swap(*port);
}

/* A process outside any vhost reaches an IPv6 vIP from ::ffff:127.0.0.1 (it
 * has no IPv6 address the shim could give it); on a host, and under the
 * eBPF backend, that is ::1.  So on an IPv6 socket whose other end (the
 * peer when `sa` is the local address, the local one otherwise) is an IPv6
 * vIP's real address, ::ffff:127.0.0.1 is shown as ::1.  One more system
 * call, on this rare address only. */
static void host_as_v6(int fd, struct sockaddr *sa, socklen_t cap, const socklen_t *len, int sa_is_local)
{
	struct sockaddr_storage other;
	socklen_t olen = sizeof(other);
	struct in6_addr vip;
	uint32_t *v4;
	int saved = errno;

	if (!sa || !len || sa->sa_family != AF_INET6 || !(v4 = sockaddr_v4(sa, *len < cap ? *len : cap)) ||
	    *v4 != htonl(INADDR_LOOPBACK))
		return;
	if ((sa_is_local ? real_getpeername : real_getsockname)(fd, (struct sockaddr *)&other, &olen) == 0 &&
	    (v4 = sockaddr_v4((struct sockaddr *)&other, olen)) && vip_of(*v4, &vip) && !IN6_IS_ADDR_V4MAPPED(&vip))
		((struct sockaddr_in6 *)sa)->sin6_addr = in6addr_loopback;
	errno = saved;
}

/* What the program is shown for an address the kernel returned: the
 * vhost's loopback (loopback.c), else the vIP a real address stands for. */
static void show(int fd, struct sockaddr *sa, socklen_t cap, socklen_t *len, int sa_is_local)
{
	if (!sa_is_local)
		lo_note_sender(fd, sa, cap, len);
	if (lo_reveal(fd, sa, cap, len, sa_is_local))
		return;
	host_as_v6(fd, sa, cap, len, sa_is_local);
	reveal(sa, cap, len);
}

static int v6only(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);

	return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len) == 0 && on;
}

/* Whether fd has no local address yet: a connect or send would pick one. */
int shim_unbound(int fd, struct sockaddr_storage *cur, socklen_t *len)
{
	*len = sizeof(*cur);
	if (real_getsockname(fd, (struct sockaddr *)cur, len) != 0)
		return 0;
	if (cur->ss_family == AF_INET)
		return ((struct sockaddr_in *)cur)->sin_port == 0 && sockaddr_is_wildcard((struct sockaddr *)cur, *len);
	if (cur->ss_family == AF_INET6)  /* a V6ONLY socket cannot take a v4 address */
		return ((struct sockaddr_in6 *)cur)->sin6_port == 0 &&
		       sockaddr_is_wildcard((struct sockaddr *)cur, *len) && !v6only(fd);
	return 0;
}

/* Before a connect or send to a vIP: give an unbound socket the vhost's own
 * address of the destination's family (its IPv6 vIP's real address when
 * v6), so the peer sees it, as the kernel backend's connect hook does. */
static void bind_own(int fd, int v6)
{
	struct sockaddr_storage own;
	socklen_t len;
	uint32_t real;
	int one = 1, saved = errno;

	if (!(v6 ? has_vip6 : own_vip != 0) || !shim_unbound(fd, &own, &len) ||
	    !(real = v6 ? real_of6(&own_vip6) : real_of(own_vip)))
		goto out;
	/* Keep the family and length getsockname gave; zero the port. */
	if (own.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&own;
		memset(&sin6->sin6_addr, 0, sizeof(sin6->sin6_addr));
		sin6->sin6_addr.s6_addr16[5] = 0xffff;
	}
	*sockaddr_v4((struct sockaddr *)&own, len) = real;
	/* IP_BIND_ADDRESS_NO_PORT: the port is still chosen at connect time,
	 * against the destination, as for an unbound socket, so many outgoing
	 * connections do not exhaust the ephemeral range on bind. */
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	real_bind(fd, (struct sockaddr *)&own, len);
out:
	errno = saved;
}

/* An IPv6 socket about to carry an IPv6 vIP over a v4-mapped address must
 * accept one: IPV6_V6ONLY is turned off (possible until it is bound). */
void shim_allow_mapped(int fd)
{
	int off = 0, saved = errno;

	if (v6only(fd))
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	errno = saved;
}

void shim_set_mapped(struct sockaddr *sa, uint32_t real)
{
	struct in6_addr *a = &((struct sockaddr_in6 *)sa)->sin6_addr;

	memset(a, 0, sizeof(*a));
	a->s6_addr16[5] = 0xffff;
	a->s6_addr32[3] = real;
}

/* The real destination for addr, in *out; returns addr itself when no
 * translation applies (not a vIP). */
static const struct sockaddr *hide(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out)
{
	const struct sockaddr *lo = in_vhost ? lo_dest(fd, addr, len, out) : NULL;
	uint32_t real;
	int v6;

	if (lo)
		return lo;
	if (len > (socklen_t)sizeof(*out) || !(real = real_of_sa(addr, len, &v6)))
		return addr;
	if (in_vhost && lo_on_loopback(fd))
		return LO_UNREACH;  /* from its loopback: as from a host's 127.0.0.1 */
	if (v6)
		shim_allow_mapped(fd);
	bind_own(fd, v6);
	memcpy(out, addr, len);
	if (v6)
		shim_set_mapped((struct sockaddr *)out, real);
	else
		*sockaddr_v4((struct sockaddr *)out, len) = real;
	*sockaddr_port((struct sockaddr *)out, len) = low_port_swap(*sockaddr_port(addr, len));
	return (const struct sockaddr *)out;
}

/* ---- choosing an address: bind ------------------------------------------ */

/* bind's result, noting how the descriptor is bound when it succeeded. */
static int noted(int fd, int ret, int how)
{
	if (ret == 0)
		lo_note_bind(fd, how);
	return ret;
}

/* A wildcard bind in a vhost: the real address of its vIP of that family.
 * 0.0.0.0 (and ::ffff:0.0.0.0) takes the IPv4 vIP's; an IPV6_V6ONLY [::]
 * the IPv6 vIP's; a dual-stack [::] the IPv4 one's when there is one (as
 * the eBPF backend does), else the IPv6 one's.  A family the vhost lacks
 * takes the vhost's own loopback of that family (127.0.0.1 or ::1, as on a
 * host whose only address of the family is its loopback), so a daemon that
 * binds both families (nginx's `listen [::]` beside its IPv4 one) starts as
 * on a host with one; without a loopback of its own (--host-loopback) it is
 * parked at a free port, where nothing reaches it. */
static int bind_wildcard(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	int v6 = addr->sa_family == AF_INET6 && !sockaddr_v4(addr, len), use6;
	uint32_t real;

	if (len > (socklen_t)sizeof(copy))
		return real_bind(fd, addr, len);
	use6 = v6 && (v6only(fd) || !own_vip);
	if (use6 ? has_vip6 : own_vip != 0) {
		if (!(real = use6 ? real_of6(&own_vip6) : real_of(own_vip)))
			return vhost_gone() ? -1 : real_bind(fd, addr, len);
	} else {
		/* The vhost's own loopback of that family (127.0.0.1, ::1), as on a
		 * host without that family's address; parked without one. */
		real = v6 ? own_lo6 : own_lo4;
		use6 = v6;
	}
	memcpy(&copy, addr, len);
	*sockaddr_port((struct sockaddr *)&copy, len) = real ? low_port_swap(*sockaddr_port(addr, len)) : 0;
	if (copy.ss_family == AF_INET)
		((struct sockaddr_in *)&copy)->sin_addr.s_addr = real ? real : htonl(INADDR_LOOPBACK);
	else if (!real)
		((struct sockaddr_in6 *)&copy)->sin6_addr = in6addr_loopback;
	else {
		if (use6)
			shim_allow_mapped(fd);
		shim_set_mapped((struct sockaddr *)&copy, real);
	}
	if (real && (real == own_lo4 || real == own_lo6))
		return noted(fd, real_bind(fd, (struct sockaddr *)&copy, len), LO_BIND_WILDCARD);
	lo_note_bind(fd, LO_BIND_OTHER);
	return real_bind(fd, (struct sockaddr *)&copy, len);
}

static int is_own(const struct sockaddr *addr, socklen_t len, int v6)
{
	if (v6)
		return has_vip6 && IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)addr)->sin6_addr, &own_vip6);
	return own_vip && *sockaddr_v4(addr, len) == own_vip;
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	uint32_t real;
	int v6;

	pthread_once(&once, init);
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if (in_vhost && lo_bind(fd, addr, len, &copy))
		return noted(fd, real_bind(fd, (struct sockaddr *)&copy, len), LO_BIND_LOOPBACK);
	if (in_vhost && sockaddr_is_wildcard(addr, len))
		return bind_wildcard(fd, addr, len);
	if (in_vhost)
		lo_note_bind(fd, LO_BIND_OTHER);
	if (len > (socklen_t)sizeof(copy) || !(real = real_of_sa(addr, len, &v6)))
		return real_bind(fd, addr, len);
	if (!is_own(addr, len, v6)) {
		/* Another vhost's address: as on a host that lacks it. */
		errno = EADDRNOTAVAIL;
		return -1;
	}
	memcpy(&copy, addr, len);
	if (v6) {
		shim_allow_mapped(fd);
		shim_set_mapped((struct sockaddr *)&copy, real);
	} else {
		*sockaddr_v4((struct sockaddr *)&copy, len) = real;
	}
	*sockaddr_port((struct sockaddr *)&copy, len) = low_port_swap(*sockaddr_port(addr, len));
	return real_bind(fd, (struct sockaddr *)&copy, len);
}

/* ---- sending to an address ---------------------------------------------- */

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	const struct sockaddr *dest;

	pthread_once(&once, init);
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if ((dest = hide(fd, addr, len, &copy)) == LO_REFUSED || dest == LO_UNREACH) {
		errno = dest == LO_REFUSED ? ECONNREFUSED : ENETUNREACH;
		return -1;
	}
	return real_connect(fd, dest, len);
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	const struct sockaddr *dest;

	pthread_once(&once, init);
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if ((dest = hide(fd, addr, len, &copy)) == LO_REFUSED)
		return n;  /* lost, as at a closed port */
	if (dest == LO_UNREACH) {
		errno = ENETUNREACH;
		return -1;
	}
	return real_sendto(fd, buf, n, flags, dest, len);
}

static ssize_t iov_bytes(const struct msghdr *msg)
{
	size_t i, n = 0;

	for (i = 0; i < msg->msg_iovlen; i++)
		n += msg->msg_iov[i].iov_len;
	return n;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct sockaddr_storage copy;
	struct msghdr m;

	pthread_once(&once, init);
	if (!msg || !msg->msg_name)
		return real_sendmsg(fd, msg, flags);
	if (is_inet(msg->msg_name, msg->msg_namelen) && vhost_gone())
		return -1;
	m = *msg;
	m.msg_name = (void *)hide(fd, msg->msg_name, msg->msg_namelen, &copy);
	if (m.msg_name == LO_REFUSED)
		return iov_bytes(msg);  /* lost, as at a closed port */
	if (m.msg_name == LO_UNREACH) {
		errno = ENETUNREACH;
		return -1;
	}
	return real_sendmsg(fd, &m, flags);
}

/* The caller's vector is rewritten for the call and restored after it:
 * the kernel fills in msg_len, so it cannot be a copy. */
EXPORT int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
	struct sockaddr_storage stack_copies[MMSG_ON_STACK], *copies = stack_copies;
	void *stack_names[MMSG_ON_STACK], **names = stack_names;
	unsigned int i, sendable;
	int ret, saved, unreachable = 0;

	pthread_once(&once, init);
	if (!msgs)
		return real_sendmmsg(fd, msgs, n, flags);
	if (n && is_inet(msgs[0].msg_hdr.msg_name, msgs[0].msg_hdr.msg_namelen) && vhost_gone())
		return -1;
	if (n > MMSG_MAX)
		n = MMSG_MAX;
	if (n > MMSG_ON_STACK) {
		copies = malloc(n * sizeof(*copies));
		names = malloc(n * sizeof(*names));
		if (!copies || !names) {
			free(copies == stack_copies ? NULL : copies);
			free(names == stack_names ? NULL : names);
			copies = stack_copies, names = stack_names;
			n = MMSG_ON_STACK;  /* a short count is a valid answer */
		}
	}
	for (i = 0; i < n; i++) {
		names[i] = msgs[i].msg_hdr.msg_name;
		if (names[i])
			msgs[i].msg_hdr.msg_name = (void *)hide(fd, names[i], msgs[i].msg_hdr.msg_namelen, &copies[i]);
		if (msgs[i].msg_hdr.msg_name == LO_REFUSED || msgs[i].msg_hdr.msg_name == LO_UNREACH) {
			unreachable = msgs[i].msg_hdr.msg_name == LO_UNREACH;
			msgs[i].msg_hdr.msg_name = names[i];
			break;
		}
	}
	sendable = i;
	ret = sendable ? real_sendmmsg(fd, msgs, sendable, flags) : unreachable ? -1 : 0;
	saved = sendable || !unreachable ? errno : ENETUNREACH;
	if (sendable < n && ret == (int)sendable && !unreachable) {
		msgs[sendable].msg_len = iov_bytes(&msgs[sendable].msg_hdr);
		ret++;  /* the one only the machine would take: lost, as at a closed port */
	}
	for (i = 0; i < sendable; i++)
		msgs[i].msg_hdr.msg_name = names[i];
	if (copies != stack_copies)
		free(copies);
	if (names != stack_names)
		free(names);
	errno = saved;
	return ret;
}

/* ---- revealing addresses ------------------------------------------------ */

static socklen_t cap_of(const struct sockaddr *addr, const socklen_t *len)
{
	return addr && len ? *len : 0;
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	pthread_once(&once, init);
	ret = real_getsockname(fd, addr, len);
	if (ret == 0) {
		show(fd, addr, cap, len, 1);
	}
	return ret;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	pthread_once(&once, init);
	ret = real_getpeername(fd, addr, len);
	if (ret == 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	pthread_once(&once, init);
	ret = real_accept(fd, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	pthread_once(&once, init);
	ret = real_accept4(fd, addr, len, flags);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

/* What _FORTIFY_SOURCE builds call instead of recvfrom when the buffer's
 * size is known at compile time.  (__recv_chk needs no wrapper: recv
 * returns no address.) */
EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
			      socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvfrom_chk ? real_recvfrom_chk(fd, buf, n, buflen, flags, addr, len)
				: real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	socklen_t cap = msg && msg->msg_name ? msg->msg_namelen : 0;
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvmsg(fd, msg, flags);
	if (ret >= 0 && msg) {
		show(fd, msg->msg_name, cap, &msg->msg_namelen, 0);
	}
	return ret;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags, struct timespec *timeout)
{
	socklen_t caps[MMSG_MAX];
	unsigned int i;
	int ret;

	pthread_once(&once, init);
	if (!msgs)
		return real_recvmmsg(fd, msgs, n, flags, timeout);
	if (n > MMSG_MAX)
		n = MMSG_MAX;
	for (i = 0; i < n; i++)
		caps[i] = msgs[i].msg_hdr.msg_name ? msgs[i].msg_hdr.msg_namelen : 0;
	ret = real_recvmmsg(fd, msgs, n, flags, timeout);
	for (i = 0; ret > 0 && i < (unsigned int)ret; i++) {
		show(fd, msgs[i].msg_hdr.msg_name, caps[i], &msgs[i].msg_hdr.msg_namelen, 0);
	}
	return ret;
}

/* ---- the vhost's own interface ------------------------------------------ */

/* The vhost's own address as an interface, "vaddr0", ahead of the real list,
 * so that programs looking for their address (hostname -I, daemons picking
 * an address to advertise) find the vIP.  One block, tagged, so that our
 * freeifaddrs can tell it from glibc's. */
#define IFA_TAG 0x76616464u  /* "vadd" */

struct own_ifaddr {
	struct ifaddrs ifa;
	struct sockaddr_in addr, mask;
	char name[IFNAMSIZ];
	uint32_t tag;
};

EXPORT int getifaddrs(struct ifaddrs **out)
{
	struct own_ifaddr *own;
	int ret, saved;

	pthread_once(&once, init);
	ret = real_getifaddrs(out);
	if (ret != 0 || !own_vip || host_interfaces)
		return ret;
	saved = errno;
	own = calloc(1, sizeof(*own));
	errno = saved;
	if (!own)
		return ret;  /* the real list still serves */
	own->tag = IFA_TAG;
	strcpy(own->name, "vaddr0");
	own->addr.sin_family = own->mask.sin_family = AF_INET;
	own->addr.sin_addr.s_addr = own_vip;
	own->mask.sin_addr.s_addr = 0xffffffff;
	own->ifa.ifa_name = own->name;
	own->ifa.ifa_flags = IFF_UP | IFF_RUNNING;
	own->ifa.ifa_addr = (struct sockaddr *)&own->addr;
	own->ifa.ifa_netmask = (struct sockaddr *)&own->mask;
	own->ifa.ifa_next = *out;
	*out = &own->ifa;
	return 0;
}

EXPORT void freeifaddrs(struct ifaddrs *ifa)
{
	struct own_ifaddr *own = (struct own_ifaddr *)ifa;

	pthread_once(&once, init);
	/* The name pointer first: glibc's block is larger than ours, but only
	 * ours points its name just past its two addresses. */
	if (ifa && ifa->ifa_name == own->name && own->tag == IFA_TAG) {
		real_freeifaddrs(ifa->ifa_next);
		free(own);
		return;
	}
	real_freeifaddrs(ifa);
}

/* ---- for exec.c ----------------------------------------------------------- */

void shim_ready(void)
{
	pthread_once(&once, init);
}

char **child_env(char *const envp[])
{
	int saved = errno;
	char **env;

	saved_env[3] = (char *)member_env();  /* its number may have moved */
	env = env_for_child(envp, saved_env, 6, shim_file);

	errno = saved;
	return env;
}

void free_env(char **env)
{
	int saved = errno;

	free(env);
	errno = saved;
}

/* ---- for loopback.c ------------------------------------------------------- */

uint32_t shim_own_real(int v6)
{
	return v6 ? (has_vip6 ? real_of6(&own_vip6) : 0) : (own_vip ? real_of(own_vip) : 0);
}

int shim_real_name(int fd, int local, struct sockaddr *sa, socklen_t *len)
{
	return (local ? real_getsockname : real_getpeername)(fd, sa, len);
}

int shim_real_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	return real_bind(fd, sa, len);
}
