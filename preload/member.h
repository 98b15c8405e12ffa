/* Membership of a vhost (see member.c and vaddr/backends/members.py). */
#ifndef VADDR_MEMBER_H
#define VADDR_MEMBER_H

/* Take or keep this process's hold on its vhost's member file; called once
 * from the shim's init, for a process with a vIP. */
void member_init(const char *map_path, const char *vip);

/* "VADDR_MEMBER_FD=N" for the environment of exec'd children (N follows the
 * descriptor if it had to move), or NULL when this process holds none. */
const char *member_env(void);

#endif
