/* What shim.c shares with exec.c (all hidden: -fvisibility=hidden). */
#ifndef VADDR_SHIM_H
#define VADDR_SHIM_H

#include <stdint.h>

extern uint32_t own_vip;  /* this process's vIP, network order; 0: a client */

/* The shim's init, once (as every wrapper calls it first). */
void shim_ready(void);

/* The environment for an exec'd child (see env_for_child), errno kept. */
char **child_env(char *const envp[]);
void free_env(char **env);

#endif
