/* The vhost's own interface: getifaddrs() lists the vIP first. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <pthread.h>

#include "shim.h"

#define EXPORT __attribute__((visibility("default")))

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

	shim_ready();
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

	shim_ready();
	/* The name pointer first: glibc's block is larger than ours, but only
	 * ours points its name just past its two addresses. */
	if (ifa && ifa->ifa_name == own->name && own->tag == IFA_TAG) {
		real_freeifaddrs(ifa->ifa_next);
		free(own);
		return;
	}
	real_freeifaddrs(ifa);
}
