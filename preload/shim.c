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
 * pure functions in translate.c.  This file resolves the real functions and
 * keeps what children inherit; the wrappers are in bind.c, send.c,
 * reveal.c, ifaddrs.c and exec.c, the map in map.c, the vhost's own
 * loopback in loopback.c. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "loopback.h"
#include "member.h"
#include "shim.h"
#include "translate.h"

extern char **environ;

/* ---- the real functions ------------------------------------------------- */

int (*real_bind)(int, const struct sockaddr *, socklen_t);
int (*real_connect)(int, const struct sockaddr *, socklen_t);
int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
int (*real_accept)(int, struct sockaddr *, socklen_t *);
int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
ssize_t (*real_recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *, socklen_t *);
ssize_t (*real_recvmsg)(int, struct msghdr *, int);
int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
int (*real_getifaddrs)(struct ifaddrs **);
void (*real_freeifaddrs)(struct ifaddrs *);

static pthread_once_t once = PTHREAD_ONCE_INIT;
uint32_t own_vip;                /* shared with the other files through shim.h */
struct in6_addr own_vip6;
int has_vip6, in_vhost;
int host_interfaces;             /* --host-interfaces: getifaddrs as the machine's */
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

static void init(void)
{
	const char *vip = getenv("VADDR_VIP"), *vip6 = getenv("VADDR_VIP6"), *map;
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
	saved_env[0] = save_var("LD_PRELOAD");
	saved_env[1] = save_var("VADDR_MAP");
	saved_env[2] = save_var("VADDR_VIP");
	saved_env[4] = save_var("VADDR_VIP6");
	saved_env[5] = save_var("VADDR_LOOPBACK");
	if (in_vhost)
		lo_init(getenv("VADDR_LOOPBACK"));
	if ((map = map_open(getenv("VADDR_MAP"))) && in_vhost)
		member_init(map, own_vip ? vip : vip6);  /* the file is named for the first address */
	if (dladdr((void *)init, &self) && self.dli_fname && strchr(self.dli_fname, '/'))
		shim_file = strdup(self.dli_fname);
	pthread_atfork(map_before_fork, map_after_fork, map_after_fork);
	errno = saved;
}

__attribute__((constructor)) static void shim_constructor(void)
{
	pthread_once(&once, init);
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
