/* What the shim's files share (all hidden: -fvisibility=hidden).  shim.c
 * resolves the real functions and keeps the vhost's identity; map.c holds
 * the map; bind.c, send.c, reveal.c, ifaddrs.c and exec.c wrap libc. */
#ifndef VADDR_SHIM_H
#define VADDR_SHIM_H

#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

extern uint32_t own_vip;          /* this process's IPv4 vIP, network order; 0: none */
extern struct in6_addr own_vip6;  /* its IPv6 vIP; valid when has_vip6 */
extern int has_vip6;
extern int in_vhost;              /* either: 0 for a client of the lab */
extern int host_interfaces;       /* --host-interfaces: getifaddrs as the machine's */

/* The functions the wrappers stand in front of, resolved in the shim's init
 * with dlsym(RTLD_NEXT). */
extern int (*real_bind)(int, const struct sockaddr *, socklen_t);
extern int (*real_connect)(int, const struct sockaddr *, socklen_t);
extern int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
extern int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
extern int (*real_accept)(int, struct sockaddr *, socklen_t *);
extern int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
extern ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
extern ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
extern int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
extern ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
extern ssize_t (*real_recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *, socklen_t *);
extern ssize_t (*real_recvmsg)(int, struct msghdr *, int);
extern int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
extern int (*real_getifaddrs)(struct ifaddrs **);
extern void (*real_freeifaddrs)(struct ifaddrs *);

/* map.c: the map file's path (kept; NULL when none), lookups that re-read
 * the file when it changed, the fork guard for its lock, and failing
 * closed (errno EADDRNOTAVAIL, one line on stderr) once the vhost's own
 * vIP has left the map.  Lookups keep errno. */
const char *map_open(const char *path);
uint32_t real_of(uint32_t vip);                   /* 0: not a vIP */
uint32_t real_of6(const struct in6_addr *vip);
uint32_t real_of_sa(const struct sockaddr *sa, socklen_t len, int *v6);
int vip_of(uint32_t real, struct in6_addr *vip);  /* 0: stands for none */
int vhost_gone(void);
int is_inet(const struct sockaddr *addr, socklen_t len);
void map_before_fork(void);
void map_after_fork(void);

/* bind.c */
int v6only(int fd);

/* The shim's init, once (as every wrapper calls it first). */
void shim_ready(void);

/* The environment for an exec'd child (see env_for_child), errno kept. */
char **child_env(char *const envp[]);
void free_env(char **env);

/* For loopback.c (and bind.c, send.c): the real address of the vhost's vIP of a family (0:
 * none), the real getsockname (local) or getpeername, the real bind, and
 * the shim's handling of IPv6 sockets that carry v4-mapped addresses. */
uint32_t shim_own_real(int v6);
int shim_real_name(int fd, int local, struct sockaddr *sa, socklen_t *len);
int shim_real_bind(int fd, const struct sockaddr *sa, socklen_t len);
int shim_unbound(int fd, struct sockaddr_storage *cur, socklen_t *len);
void shim_allow_mapped(int fd);
void shim_set_mapped(struct sockaddr *sa, uint32_t real);

#endif
