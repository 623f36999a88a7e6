/* What the kernel moving the bytes would save (issue 17, BENCHMARKS.md "CPU
 * per byte"): 1 MiB at a time over loopback TCP, the sender by pread + write
 * or sendfile, the receiver by read + pwrite or splice through a pipe; each
 * prints its own CPU seconds (user + system).
 *
 *   gcc -O2 -o /tmp/zerocopy bench/zerocopy.c
 *   /tmp/zerocopy recv PORT copy|splice OUT & /tmp/zerocopy send PORT copy|sendfile IN; wait
 *
 * A measurement, not part of pareco's build; check the copy with cmp IN OUT. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#define PIECE (1 << 20)

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

static void receive(int s, const char *mode, int f, char *buf) {
    long total = 0;
    double start = cpu();
    if (!strcmp(mode, "copy")) {
        ssize_t n;
        while ((n = read(s, buf, PIECE)) > 0) {
            if (pwrite(f, buf, n, total) != n) fail("pwrite");
            total += n;
        }
    } else {
        int p[2];
        if (pipe(p) || fcntl(p[0], F_SETPIPE_SZ, PIECE) < 0) fail("pipe");
        ssize_t n;
        while ((n = splice(s, 0, p[1], 0, PIECE, SPLICE_F_MOVE | SPLICE_F_MORE)) > 0) {
            while (n > 0) {
                ssize_t m = splice(p[0], 0, f, 0, n, SPLICE_F_MOVE);
                if (m <= 0) fail("splice");
                n -= m;
                total += m;
            }
        }
    }
    fprintf(stderr, "recv %s %ld bytes, CPU %.3f s\n", mode, total, cpu() - start);
}

static void send_file(int s, const char *mode, int f, char *buf) {
    off_t off = 0;
    double start = cpu();
    ssize_t n;
    if (!strcmp(mode, "copy")) {
        while ((n = pread(f, buf, PIECE, off)) > 0) {
            off += n;
            for (char *p = buf; n > 0;) {
                ssize_t m = write(s, p, n);
                if (m <= 0) fail("write");
                p += m;
                n -= m;
            }
        }
    } else {
        while ((n = sendfile(s, f, &off, PIECE)) > 0) {
        }
    }
    fprintf(stderr, "send %s %ld bytes, CPU %.3f s\n", mode, (long)off, cpu() - start);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s recv|send PORT copy|splice|sendfile FILE\n", argv[0]);
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    char *buf = aligned_alloc(4096, PIECE);
    if (!strcmp(argv[1], "recv")) {
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (void *)&a, sizeof a) || listen(l, 1)) fail("listen");
        int s = accept(l, 0, 0);
        int f = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (s < 0 || f < 0) fail("accept or open");
        receive(s, argv[3], f, buf);
    } else {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        while (connect(s, (void *)&a, sizeof a)) usleep(10000);
        int f = open(argv[4], O_RDONLY);
        if (f < 0) fail("open");
        send_file(s, argv[3], f, buf);
    }
    return 0;
}
