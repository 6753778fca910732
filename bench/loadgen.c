/*
 * loadgen: the compiled load generator of rawsvc's benchmarks (bench/run.py
 * builds it with `cc -O2` into a temporary directory; never commit a binary).
 *
 * Every mode prints one JSON object on stdout when it is done.
 *
 *   loadgen rt HOST PORT CONC SIZE DURATION WARMUP eof|line
 *       CONC connections at once, each job: connect, send SIZE bytes (line:
 *       SIZE bytes then '\n'), eof: half-close and read until EOF, line: read
 *       until '\n'; close; start the next.  One thread, epoll.  Reports jobs/s
 *       and p50/p99 latency over DURATION seconds after WARMUP seconds, plus
 *       the generator's own CPU use over that window (cpu = (user+sys)/wall;
 *       near 1.0 would mean the generator, not the server, is the limit).
 *   loadgen stream HOST PORT COUNT SIZE
 *       one connection: COUNT messages of SIZE bytes (the last one '\n'),
 *       half-close, read until EOF.  Reports seconds and messages/s.
 *   loadgen blast HOST PORT BYTES
 *       one connection: BYTES bytes, half-close, read until EOF.
 *   loadgen sink PORT
 *       listen on 127.0.0.1:PORT, discard everything, close at EOF; prints
 *       {"listening": PORT} once listening and {"received": BYTES} per
 *       connection closed; runs until killed.
 *   loadgen idle HOST PORT N SECONDS
 *       open N connections (paced), print {"ready": n}, hold them until stdin
 *       closes or SECONDS pass.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static struct sockaddr_in addr_of(const char *host, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "loadgen: bad address %s\n", host);
        exit(2);
    }
    return a;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- rt ---------------------------------------------------------------- */

enum { C_CONNECTING, C_READING };

struct conn {
    int fd;
    int state;
    double started;
    size_t got;
    char head[4];
};

static struct sockaddr_in g_addr;
static int g_ep;
static char *g_payload;
static size_t g_len;
static int g_line;

static unsigned g_next_src;

static int start_job(struct conn *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    /* Spread source addresses over 127.0.0.2-127.0.0.201: tens of thousands
     * of short connections a second would otherwise run one 4-tuple space
     * (28k ephemeral ports) into TIME_WAIT and stall on connect. */
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + (g_next_src++ % 200));
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->got = 0;
    c->started = now();
    int r = connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr);
    if (r < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    c->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* Returns 1 when the job completed, 0 when still going, -1 on error. */
static int step(struct conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) return -1;
        ssize_t n = send(c->fd, g_payload, g_len, MSG_NOSIGNAL);
        if (n != (ssize_t)g_len) return -1; /* 1 KiB always fits a fresh socket buffer */
        if (!g_line) shutdown(c->fd, SHUT_WR);
        c->state = C_READING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
        return 0;
    }
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            for (ssize_t i = 0; i < n && c->got + i < 2; i++) c->head[c->got + i] = buf[i];
            c->got += n;
            if (g_line && memchr(buf, '\n', n)) return (c->head[0] == 'O' && c->head[1] == 'K') ? 1 : -1;
            continue;
        }
        if (n == 0) {
            if (g_line) return -1; /* closed before the reply line */
            return (c->got >= 2 && c->head[0] == 'O' && c->head[1] == 'K') ? 1 : -1;
        }
        if (errno == EAGAIN) return 0;
        return -1;
    }
    (void)events;
}

static void restart(struct conn *c, long *errors) {
    for (int tries = 0; start_job(c) < 0; tries++) {
        ++*errors;
        if (tries == 1000) {
            perror("loadgen: cannot start a job");
            exit(1);
        }
        usleep(1000);
    }
}

static int run_rt(int argc, char **argv) {
    if (argc < 9) return 2;
    g_addr = addr_of(argv[2], atoi(argv[3]));
    int conc = atoi(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    double duration = atof(argv[6]), warmup = atof(argv[7]);
    g_line = strcmp(argv[8], "line") == 0;
    g_len = size + (g_line ? 1 : 0);
    g_payload = malloc(g_len);
    memset(g_payload, 'x', g_len);
    if (g_line) g_payload[g_len - 1] = '\n';
    g_ep = epoll_create1(0);
    struct conn *conns = calloc(conc, sizeof *conns);
    size_t cap = 1 << 20, nlat = 0;
    uint32_t *lat = malloc(cap * sizeof *lat);
    long errors = 0, done = 0;
    double t0 = now(), m0 = t0 + warmup, m1 = m0 + duration, cpu0 = 0;
    int measuring = 0;
    for (int i = 0; i < conc; i++) restart(&conns[i], &errors);
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!measuring && t >= m0) {
            measuring = 1;
            cpu0 = cpu_seconds();
        }
        if (t >= m1) break;
        int n = epoll_wait(g_ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            int r = step(c, evs[i].events);
            if (r == 0) continue;
            double end = now();
            close(c->fd); /* also removes it from the epoll set */
            if (r > 0 && measuring && end < m1) {
                done++;
                if (nlat == cap) lat = realloc(lat, (cap *= 2) * sizeof *lat);
                lat[nlat++] = (uint32_t)((end - c->started) * 1e6);
            } else if (r < 0 && measuring) {
                errors++;
            }
            restart(c, &errors);
        }
    }
    double cpu = cpu_seconds() - cpu0;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double p50 = nlat ? lat[nlat / 2] / 1000.0 : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] / 1000.0 : 0;
    printf("{\"jobs\": %ld, \"errors\": %ld, \"seconds\": %.3f, \"jobs_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"loadgen_cpu\": %.3f}\n",
           done, errors, duration, done / duration, p50, p99, cpu / duration);
    return 0;
}

/* ---- one-connection modes ------------------------------------------------ */

static int connect_blocking(const char *host, int port) {
    struct sockaddr_in a = addr_of(host, port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("loadgen: connect");
        exit(1);
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static long long read_to_eof(int fd) {
    char buf[65536];
    long long total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) total += n;
        else if (n == 0) return total;
        else if (errno != EINTR) return -1;
    }
}

static int run_stream(int argc, char **argv) {
    if (argc < 6) return 2;
    long count = atol(argv[4]);
    size_t size = (size_t)atol(argv[5]);
    long per = 65536 / size;
    if (per < 1) per = 1;
    char *block = malloc(per * size);
    memset(block, 'x', per * size);
    for (long i = 0; i < per; i++) block[i * size + size - 1] = '\n';
    double t0 = now(), cpu0 = cpu_seconds();
    int fd = connect_blocking(argv[2], atoi(argv[3]));
    long left = count;
    int err = 0;
    while (left > 0 && !err) {
        long k = left < per ? left : per;
        err = send_all(fd, block, k * size);
        left -= k;
    }
    shutdown(fd, SHUT_WR);
    long long reply = read_to_eof(fd);
    double secs = now() - t0;
    close(fd);
    printf("{\"messages\": %ld, \"seconds\": %.3f, \"messages_per_s\": %.1f, \"reply_bytes\": %lld, "
           "\"error\": %d, \"loadgen_cpu\": %.3f}\n",
           count, secs, count / secs, reply, err || reply < 0, (cpu_seconds() - cpu0) / secs);
    return 0;
}

static int run_blast(int argc, char **argv) {
    if (argc < 5) return 2;
    long long total = atoll(argv[4]);
    size_t chunk = 1 << 20;
    char *block = malloc(chunk);
    memset(block, 'x', chunk);
    double t0 = now(), cpu0 = cpu_seconds();
    int fd = connect_blocking(argv[2], atoi(argv[3]));
    long long left = total;
    int err = 0;
    while (left > 0 && !err) {
        size_t k = left < (long long)chunk ? (size_t)left : chunk;
        err = send_all(fd, block, k);
        left -= (long long)k;
    }
    shutdown(fd, SHUT_WR);
    long long reply = read_to_eof(fd);
    double secs = now() - t0;
    printf("{\"bytes\": %lld, \"seconds\": %.3f, \"mb_per_s\": %.1f, \"reply_bytes\": %lld, "
           "\"error\": %d, \"loadgen_cpu\": %.3f}\n",
           total, secs, total / secs / 1e6, reply, err || reply < 0, (cpu_seconds() - cpu0) / secs);
    return 0;
}

static int run_sink(int argc, char **argv) {
    if (argc < 3) return 2;
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr_of("127.0.0.1", atoi(argv[2]));
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 128) < 0) {
        perror("loadgen: sink");
        return 1;
    }
    printf("{\"listening\": %s}\n", argv[2]);
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[1 << 18];
    static long long got[65536];
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (c >= 0 && c < 65536) {
                    got[c] = 0;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e2);
                }
                continue;
            }
            for (;;) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r > 0) {
                    got[fd] += r;
                    continue;
                }
                if (r < 0 && errno == EAGAIN) break;
                printf("{\"received\": %lld}\n", got[fd]);
                fflush(stdout);
                close(fd);
                break;
            }
        }
    }
}

static int run_idle(int argc, char **argv) {
    if (argc < 6) return 2;
    struct sockaddr_in a = addr_of(argv[2], atoi(argv[3]));
    int n = atoi(argv[4]), ok = 0;
    double seconds = atof(argv[5]);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("loadgen: idle connect");
            if (fd >= 0) close(fd);
            continue;
        }
        ok++;
        if (i % 100 == 99) usleep(2000); /* let the server accept; keep its backlog short */
    }
    printf("{\"ready\": %d}\n", ok);
    fflush(stdout);
    struct pollfd p = {.fd = 0, .events = POLLIN};
    double end = now() + seconds;
    char b[64];
    while (now() < end) {
        if (poll(&p, 1, 100) > 0 && read(0, b, sizeof b) <= 0) break;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) goto usage;
    int r = 2;
    if (!strcmp(argv[1], "rt")) r = run_rt(argc, argv);
    else if (!strcmp(argv[1], "stream")) r = run_stream(argc, argv);
    else if (!strcmp(argv[1], "blast")) r = run_blast(argc, argv);
    else if (!strcmp(argv[1], "sink")) r = run_sink(argc, argv);
    else if (!strcmp(argv[1], "idle")) r = run_idle(argc, argv);
    if (r != 2) return r;
usage:
    fprintf(stderr, "usage: see the comment at the top of bench/loadgen.c\n");
    return 2;
}
