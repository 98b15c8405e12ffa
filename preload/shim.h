/* What shim.c shares with exec.c (all hidden: -fvisibility=hidden). */
#ifndef VADDR_SHIM_H
#define VADDR_SHIM_H

#include <netinet/in.h>
#include <stdint.h>

extern uint32_t own_vip;          /* this process's IPv4 vIP, network order; 0: none */
extern struct in6_addr own_vip6;  /* its IPv6 vIP; valid when has_vip6 */
extern int has_vip6;
extern int in_vhost;              /* either: 0 for a client of the lab */

/* The shim's init, once (as every wrapper calls it first). */
void shim_ready(void);

/* The environment for an exec'd child (see env_for_child), errno kept. */
char **child_env(char *const envp[]);
void free_env(char **env);

#endif
