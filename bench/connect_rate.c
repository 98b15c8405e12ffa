/* Connect+accept rate of one client against one server, in C so that the
 * cost of vaddr's connect hook is not hidden under an interpreter's.
 *   connect_rate server ADDR PORT          accept and close, forever
 *   connect_rate client ADDR PORT SECONDS  print connections per second
 * SO_LINGER 0 closes with a reset, so TIME_WAIT does not exhaust ports. */
#include <arpa/inet.h>
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
