/* 127.0.0.1 and ::1 inside a shim vhost: the vhost's own (loopback.c). */
#ifndef VADDR_LOOPBACK_H
#define VADDR_LOOPBACK_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

/* The vhost's two real loopback addresses (network order), from
 * VADDR_LOOPBACK="L4 L6"; both 0 when 127.0.0.1 is the machine's (a lab
 * client, or --host-loopback). */
extern uint32_t own_lo4, own_lo6;

void lo_init(const char *spec);

/* A bind of 127.0.0.1 or ::1: 1 when *out holds where it really goes. */
int lo_bind(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out);

/* A connect or send to 127.0.0.1 or ::1: the real destination in *out, or
 * NULL when addr is not the vhost's loopback, or LO_REFUSED when only a
 * socket of the machine's would answer (refuse the connect, drop the
 * datagram: the vhost has nothing there). */
#define LO_REFUSED ((const struct sockaddr *)-1)
const struct sockaddr *lo_dest(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out);

/* Show an address the kernel returned as the program expects when it is
 * the vhost's loopback, or its own address reached over it (sa_is_local:
 * sa is the socket's own address, else its peer's).  1 when it did. */
int lo_reveal(int fd, struct sockaddr *sa, socklen_t cap, const socklen_t *len, int sa_is_local);

/* Note how a descriptor's socket was bound: to the vhost's loopback (as
 * asked, or by a connect to it), by a wildcard bind that landed there (a
 * family the vhost has no address of), or otherwise. */
enum { LO_BIND_OTHER, LO_BIND_LOOPBACK, LO_BIND_WILDCARD };
void lo_note_bind(int fd, int how);

/* Whether fd's socket sits on the vhost's loopback: it reaches no vIP
 * (ENETUNREACH), as under the eBPF backend. */
int lo_on_loopback(int fd);
#define LO_UNREACH ((const struct sockaddr *)-2)

/* Note where a datagram came from (sa as the kernel gave it), so that the
 * answer to one of the machine's clients reaches it. */
void lo_note_sender(int fd, const struct sockaddr *sa, socklen_t cap, const socklen_t *len);

#endif
