/* What shim.c shares with exec.c (all hidden: -fvisibility=hidden). */
#ifndef VADDR_SHIM_H
#define VADDR_SHIM_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

extern uint32_t own_vip;          /* this process's IPv4 vIP, network order; 0: none */
extern struct in6_addr own_vip6;  /* its IPv6 vIP; valid when has_vip6 */
extern int has_vip6;
extern int in_vhost;              /* either: 0 for a client of the lab */

/* The shim's init, once (as every wrapper calls it first). */
void shim_ready(void);

/* The environment for an exec'd child (see env_for_child), errno kept. */
char **child_env(char *const envp[]);
void free_env(char **env);

/* For loopback.c: the real address of the vhost's vIP of a family (0:
 * none), the real getsockname (local) or getpeername, the real bind, and
 * the shim's handling of IPv6 sockets that carry v4-mapped addresses. */
uint32_t shim_own_real(int v6);
int shim_real_name(int fd, int local, struct sockaddr *sa, socklen_t *len);
int shim_real_bind(int fd, const struct sockaddr *sa, socklen_t len);
int shim_unbound(int fd, struct sockaddr_storage *cur, socklen_t *len);
void shim_allow_mapped(int fd);
void shim_set_mapped(struct sockaddr *sa, uint32_t real);

#endif
