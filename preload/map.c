/* The map file, "VIP REAL" lines written by `vaddr`, and the lookups the
 * wrappers make in it: vIP -> real address and back.  Re-read only when the
 * file changed, looked at no more than once per RECHECK_NS.  When this
 * process's own vIP has left the map, vhost_gone() fails the call closed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"
#include "translate.h"

static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vmap map;          /* under map_lock */
static struct stat map_stat;     /* of the file `map` came from */
static struct timespec last_check;
static char *map_path;           /* read once: daemons such as nginx replace environ */

/* Keeps the map file's path (a copy) and returns it; NULL when none. */
const char *map_open(const char *path)
{
	if (path && *path)
		map_path = strdup(path);
	return map_path;
}

/* A fork while another thread re-reads the map would leave the child a lock
 * held forever and a half-swapped map: hold the lock across fork. */
void map_before_fork(void)
{
	pthread_mutex_lock(&map_lock);
}

void map_after_fork(void)
{
	pthread_mutex_unlock(&map_lock);
}

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
uint32_t real_of6(const struct in6_addr *vip)
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

uint32_t real_of(uint32_t vip)
{
	struct in6_addr mapped = {.s6_addr16 = {0, 0, 0, 0, 0, 0xffff}};

	mapped.s6_addr32[3] = vip;
	return real_of6(&mapped);
}

/* The real address standing for the vIP in sa (IPv4, v4-mapped or IPv6),
 * 0 when sa holds no vIP.  *v6 says whether it was an IPv6 vIP. */
uint32_t real_of_sa(const struct sockaddr *sa, socklen_t len, int *v6)
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
int vip_of(uint32_t real, struct in6_addr *vip)
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
int vhost_gone(void)
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

int is_inet(const struct sockaddr *addr, socklen_t len)
{
	return addr && len >= sizeof(sa_family_t) && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6);
}
