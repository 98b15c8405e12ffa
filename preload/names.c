/* Lab names under the LD_PRELOAD backend.  Without root, /etc/hosts is out
 * of reach, so vaddr writes a lab's names to RUN_DIR/hosts (beside the map
 * named by VADDR_MAP, "ADDR NAME" lines) and the shim answers from it:
 *
 *   getaddrinfo, gethostbyname{,2}{,_r}   a lab name resolves to its vIP
 *   gethostname, uname                     a lab host's own name
 *
 * A name found in the file is handed to the real resolver as its numeric
 * address, so services, hints and the result's memory stay libc's own.
 * Anything else goes to libc untouched.  The file is small and read at each
 * lookup: names change when labs go up and down. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/utsname.h>

#include "shim.h"

#define EXPORT __attribute__((visibility("default")))

static int (*real_getaddrinfo)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
static struct hostent *(*real_gethostbyname)(const char *);
static struct hostent *(*real_gethostbyname2)(const char *, int);
static int (*real_gethostbyname_r)(const char *, struct hostent *, char *, size_t, struct hostent **, int *);
static int (*real_gethostbyname2_r)(const char *, int, struct hostent *, char *, size_t, struct hostent **, int *);
static int (*real_gethostname)(char *, size_t);
static int (*real_uname)(struct utsname *);
static pthread_once_t names_once = PTHREAD_ONCE_INIT;
static char hosts_path[4096];

static void names_init(void)
{
	const char *map = getenv("VADDR_MAP");
	const char *slash = map ? strrchr(map, '/') : NULL;

	real_getaddrinfo = dlsym(RTLD_NEXT, "getaddrinfo");
	real_gethostbyname = dlsym(RTLD_NEXT, "gethostbyname");
	real_gethostbyname2 = dlsym(RTLD_NEXT, "gethostbyname2");
	real_gethostbyname_r = dlsym(RTLD_NEXT, "gethostbyname_r");
	real_gethostbyname2_r = dlsym(RTLD_NEXT, "gethostbyname2_r");
	real_gethostname = dlsym(RTLD_NEXT, "gethostname");
	real_uname = dlsym(RTLD_NEXT, "uname");
	if (slash && (size_t)(slash - map) + sizeof("/hosts") < sizeof(hosts_path))
		snprintf(hosts_path, sizeof(hosts_path), "%.*s/hosts", (int)(slash - map), map);
}

static void ready(void)
{
	pthread_once(&names_once, names_init);
}

/* The file's line for `name` (match on the name) or for `addr` (match on the
 * address), of `family` (AF_UNSPEC: either): 1 and the other field copied. */
static int find(const char *name, const char *addr, int family, char *out, size_t n)
{
	char line[512], a[INET6_ADDRSTRLEN], h[256];
	FILE *f;
	int found = 0;

	if (!hosts_path[0] || !(f = fopen(hosts_path, "re")))
		return 0;
	while (!found && fgets(line, sizeof(line), f)) {
		if (line[0] == '#' || sscanf(line, "%45s %255s", a, h) != 2)
			continue;
		if (family != AF_UNSPEC && (strchr(a, ':') ? AF_INET6 : AF_INET) != family)
			continue;
		if (name && strcasecmp(h, name) == 0)
			found = snprintf(out, n, "%s", a) < (int)n;
		else if (addr && strcmp(a, addr) == 0)
			found = snprintf(out, n, "%s", h) < (int)n;
	}
	fclose(f);
	return found;
}

/* This process's lab host name, if its vIP has one. */
static int own_name(char *out, size_t n)
{
	char vip[INET6_ADDRSTRLEN];
	struct in_addr in = { .s_addr = own_vip };

	shim_ready();
	if (own_vip && inet_ntop(AF_INET, &in, vip, sizeof(vip)) && find(NULL, vip, AF_INET, out, n))
		return 1;
	return has_vip6 && inet_ntop(AF_INET6, &own_vip6, vip, sizeof(vip)) && find(NULL, vip, AF_INET6, out, n);
}

EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
	char addr[INET6_ADDRSTRLEN];
	struct addrinfo numeric = { 0 };

	ready();
	if (node && find(node, NULL, hints ? hints->ai_family : AF_UNSPEC, addr, sizeof(addr))) {
		if (hints)
			numeric = *hints;
		numeric.ai_flags |= AI_NUMERICHOST;
		return real_getaddrinfo(addr, service, &numeric, res);
	}
	return real_getaddrinfo(node, service, hints, res);
}

/* A numeric lookup names the host by its address; give it its name back
 * (the static hostent's, so a per-thread copy, as libc's own is). */
static struct hostent *named(struct hostent *h, const char *name)
{
	static __thread char canon[256];

	if (h) {
		snprintf(canon, sizeof(canon), "%s", name);
		h->h_name = canon;
	}
	return h;
}

EXPORT struct hostent *gethostbyname(const char *name)
{
	char addr[INET6_ADDRSTRLEN];

	ready();
	if (name && find(name, NULL, AF_INET, addr, sizeof(addr)))
		return named(real_gethostbyname(addr), name);
	return real_gethostbyname(name);
}

EXPORT struct hostent *gethostbyname2(const char *name, int af)
{
	char addr[INET6_ADDRSTRLEN];

	ready();
	if (name && find(name, NULL, af, addr, sizeof(addr)))
		return named(real_gethostbyname2(addr, af), name);
	return real_gethostbyname2(name, af);
}

EXPORT int gethostbyname_r(const char *name, struct hostent *ret, char *buf, size_t len, struct hostent **result,
			   int *err)
{
	char addr[INET6_ADDRSTRLEN];

	ready();
	return real_gethostbyname_r(name && find(name, NULL, AF_INET, addr, sizeof(addr)) ? addr : name, ret, buf,
				    len, result, err);
}

EXPORT int gethostbyname2_r(const char *name, int af, struct hostent *ret, char *buf, size_t len,
			    struct hostent **result, int *err)
{
	char addr[INET6_ADDRSTRLEN];

	ready();
	return real_gethostbyname2_r(name && find(name, NULL, af, addr, sizeof(addr)) ? addr : name, af, ret, buf,
				     len, result, err);
}

EXPORT int gethostname(char *name, size_t len)
{
	char own[256];

	ready();
	if (own_name(own, sizeof(own))) {
		if (strlen(own) >= len) {
			errno = ENAMETOOLONG;
			return -1;
		}
		strcpy(name, own);
		return 0;
	}
	return real_gethostname(name, len);
}

EXPORT int uname(struct utsname *buf)
{
	char own[256];
	int ret;

	ready();
	ret = real_uname(buf);
	if (ret == 0 && own_name(own, sizeof(own)))
		snprintf(buf->nodename, sizeof(buf->nodename), "%.*s", (int)sizeof(buf->nodename) - 1, own);
	return ret;
}
