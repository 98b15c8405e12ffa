/* Datagram rate in C, so that the delay line's packet rate is measured rather
 * than an interpreter's sending loop.
 *   udp_rate sink ADDR PORT          print "ready", count datagrams until 1 s
 *                                    of silence, print "COUNT SECONDS" (first
 *                                    to last arrival)
 *   udp_rate send ADDR PORT COUNT    send COUNT 32-byte datagrams in batches
 *                                    of 64 (sendmmsg); print datagrams/s
 * The sink reads in batches too (recvmmsg), with a 32 MB receive buffer, so
 * the socket at the end is not what limits the figure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int sink(int fd)
{
	static char bufs[BATCH][64];
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct timeval tv = {1, 0};
	long count = 0;
	double first = 0, last = 0;
	int i, n, size = 32 << 20;

	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		iov[i] = (struct iovec){bufs[i], sizeof(bufs[i])};
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	printf("ready\n");
	fflush(stdout);
	while ((n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL)) > 0) {
		last = now();
		if (!count)
			first = last;
		count += n;
	}
	printf("%ld %.6f\n", count, last - first);
	return 0;
}

static int sender(int fd, struct sockaddr_in *to, long count)
{
	static char payload[32];
	struct mmsghdr msgs[BATCH];
	struct iovec iov = {payload, sizeof(payload)};
	long sent = 0;
	double start;
	int i;

	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_name = to;
		msgs[i].msg_hdr.msg_namelen = sizeof(*to);
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	start = now();
	while (sent < count) {
		int want = count - sent < BATCH ? count - sent : BATCH;
		int n = sendmmsg(fd, msgs, want, 0);
		if (n < 0) {
			if (errno == ENOBUFS || errno == EAGAIN)
				continue;
			perror("sendmmsg");
			return 1;
		}
		sent += n;
	}
	printf("%.0f\n", sent / (now() - start));
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	int fd;

	if (argc < 4 || inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: udp_rate sink ADDR PORT | send ADDR PORT COUNT\n");
		return 2;
	}
	sa.sin_port = htons(atoi(argv[3]));
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (!strcmp(argv[1], "sink")) {
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			perror("bind");
			return 1;
		}
		return sink(fd);
	}
	if (!strcmp(argv[1], "send") && argc == 5)
		return sender(fd, &sa, atol(argv[4]));
	fprintf(stderr, "usage: udp_rate sink ADDR PORT | send ADDR PORT COUNT\n");
	return 2;
}
