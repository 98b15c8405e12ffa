/* Socket micro-benchmarks in C, so that the cost of vaddr's hooks or shim is
 * not hidden under an interpreter's.
 *   connect_rate server ADDR PORT          accept and close, forever
 *   connect_rate client ADDR PORT SECONDS  print connections per second
 *   connect_rate echo ADDR PORT            echo one byte back, per connection, forever
 *   connect_rate rtt ADDR PORT COUNT       print the mean round trip of one byte, in us
 *   connect_rate calls                     print ns per getsockname() call
 * SO_LINGER 0 closes with a reset, so TIME_WAIT does not exhaust ports. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	struct linger lg = {1, 0};
	int one = 1;

	if (argc == 2 && !strcmp(argv[1], "calls")) {
		struct sockaddr_in me;
		socklen_t len;
		int s = socket(AF_INET, SOCK_DGRAM, 0), i, n = 1000000;
		double t;
		bind(s, (struct sockaddr *)&sa, sizeof(sa));
		t = now();
		for (i = 0; i < n; i++) {
			len = sizeof(me);
			getsockname(s, (struct sockaddr *)&me, &len);
		}
		printf("%.1f\n", (now() - t) * 1e9 / n);
		return 0;
	}
	if (argc < 4 || inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1)
		return fprintf(stderr, "usage: %s server|client ADDR PORT [SECONDS]\n", argv[0]), 2;
	sa.sin_port = htons(atoi(argv[3]));
	if (!strcmp(argv[1], "server")) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 4096))
			return perror("bind/listen"), 1;
		printf("ready\n");
		fflush(stdout);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c >= 0)
				close(c);
		}
	}
	if (!strcmp(argv[1], "echo")) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		char b;
		setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) || listen(s, 16))
			return perror("bind/listen"), 1;
		printf("ready\n");
		fflush(stdout);
		for (;;) {
			int c = accept(s, NULL, NULL);
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			while (read(c, &b, 1) == 1 && write(c, &b, 1) == 1)
				;
			close(c);
		}
	}
	if (!strcmp(argv[1], "rtt")) {
		int c = socket(AF_INET, SOCK_STREAM, 0), i, n = argc > 4 ? atoi(argv[4]) : 20000;
		char b = 'x';
		double t;
		if (connect(c, (struct sockaddr *)&sa, sizeof(sa)))
			return perror("connect"), 1;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		t = now();
		for (i = 0; i < n; i++)
			if (write(c, &b, 1) != 1 || read(c, &b, 1) != 1)
				return perror("rtt"), 1;
		printf("%.2f\n", (now() - t) * 1e6 / n);
		return 0;
	}
	double secs = argc > 4 ? atof(argv[4]) : 2, end = now() + secs;
	long n = 0;
	while (now() < end) {
		int c = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		if (connect(c, (struct sockaddr *)&sa, sizeof(sa)))
			return perror("connect"), 1;
		close(c);
		n++;
	}
	printf("%.0f\n", n / secs);
	return 0;
}
