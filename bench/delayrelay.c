/* delayrelay: a TCP relay that holds every chunk it reads for DELAY_US microseconds before
 * writing it on, in each direction - a fixed one-way delay per hop where the kernel has no
 * tc netem (bench/_netns.py builds it with gcc when netem is missing).
 *
 *     delayrelay DELAY_US LISTEN_IP:PORT=TARGET_IP:PORT [...]
 *
 * Single-threaded, ppoll() with a nanosecond timeout (no 1 ms rounding), TCP_NODELAY on both
 * legs, blocking writes (the bench's messages are small). A connection whose either leg closes
 * is closed whole. Exits on SIGTERM. Not a general-purpose proxy. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXMAP 256
#define MAXCONN 1024
#define BUF 65536

struct chunk {
    struct chunk *next;
    int64_t due;
    size_t len;
    char data[];
};

struct leg { /* bytes read from fd[i] wait in q[i] to be written to fd[1 - i] */
    struct chunk *head, *tail;
};

struct conn {
    int fd[2];
    struct leg q[2];
    int used;
};

static struct sockaddr_in targets[MAXMAP];
static int listeners[MAXMAP];
static int nmap;
static struct conn conns[MAXCONN];
static int64_t delay_ns;
static volatile sig_atomic_t stop;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int parse(const char *s, struct sockaddr_in *a) {
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void drop(struct conn *c) {
    for (int i = 0; i < 2; i++) {
        close(c->fd[i]);
        struct chunk *k = c->q[i].head;
        while (k) {
            struct chunk *n = k->next;
            free(k);
            k = n;
        }
        c->q[i].head = c->q[i].tail = NULL;
    }
    c->used = 0;
}

static void on_stop(int sig) {
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DELAY_US LISTEN_IP:PORT=TARGET_IP:PORT ...\n", argv[0]);
        return 2;
    }
    delay_ns = (int64_t)(atof(argv[1]) * 1000.0);
    signal(SIGTERM, on_stop);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 2; i < argc && nmap < MAXMAP; i++) {
        char *eq = strchr(argv[i], '=');
        struct sockaddr_in la;
        if (!eq) return 2;
        *eq = 0;
        if (parse(argv[i], &la) || parse(eq + 1, &targets[nmap])) {
            fprintf(stderr, "bad mapping %s\n", argv[i]);
            return 2;
        }
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&la, sizeof la) || listen(fd, 512)) {
            perror("bind/listen");
            return 1;
        }
        listeners[nmap++] = fd;
    }
    printf("ready\n");
    fflush(stdout);
    static struct pollfd pfd[MAXMAP + 2 * MAXCONN];
    static int who[MAXMAP + 2 * MAXCONN]; /* >= 0: conn * 2 + side; < 0: -(listener + 1) */
    char *buf = malloc(BUF);
    while (!stop) {
        int n = 0;
        int64_t next = -1;
        for (int i = 0; i < nmap; i++) {
            pfd[n] = (struct pollfd){listeners[i], POLLIN, 0};
            who[n++] = -(i + 1);
        }
        for (int c = 0; c < MAXCONN; c++) {
            if (!conns[c].used) continue;
            for (int s = 0; s < 2; s++) {
                pfd[n] = (struct pollfd){conns[c].fd[s], POLLIN, 0};
                who[n++] = c * 2 + s;
                struct chunk *h = conns[c].q[s].head;
                if (h && (next < 0 || h->due < next)) next = h->due;
            }
        }
        struct timespec ts, *tp = NULL;
        if (next >= 0) {
            int64_t wait = next - now_ns();
            if (wait < 0) wait = 0;
            ts.tv_sec = wait / 1000000000;
            ts.tv_nsec = wait % 1000000000;
            tp = &ts;
        }
        int r = ppoll(pfd, (nfds_t)n, tp, NULL);
        if (r < 0 && errno != EINTR) {
            perror("ppoll");
            return 1;
        }
        for (int i = 0; r > 0 && i < n; i++) {
            if (!pfd[i].revents) continue;
            if (who[i] < 0) {
                int l = -who[i] - 1, cfd = accept(listeners[l], NULL, NULL);
                if (cfd < 0) continue;
                int tfd = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(tfd, (struct sockaddr *)&targets[l], sizeof targets[l])) {
                    close(cfd);
                    close(tfd);
                    continue;
                }
                int c = 0;
                while (c < MAXCONN && conns[c].used) c++;
                if (c == MAXCONN) {
                    close(cfd);
                    close(tfd);
                    continue;
                }
                nodelay(cfd);
                nodelay(tfd);
                conns[c] = (struct conn){{cfd, tfd}, {{NULL, NULL}, {NULL, NULL}}, 1};
                continue;
            }
            struct conn *c = &conns[who[i] / 2];
            int s = who[i] % 2;
            if (!c->used || pfd[i].fd != c->fd[s]) continue;
            ssize_t got = read(c->fd[s], buf, BUF);
            if (got <= 0) {
                drop(c);
                continue;
            }
            struct chunk *k = malloc(sizeof *k + (size_t)got);
            k->next = NULL;
            k->due = now_ns() + delay_ns;
            k->len = (size_t)got;
            memcpy(k->data, buf, (size_t)got);
            if (c->q[s].tail) c->q[s].tail->next = k;
            else c->q[s].head = k;
            c->q[s].tail = k;
        }
        int64_t t = now_ns();
        for (int ci = 0; ci < MAXCONN; ci++) {
            struct conn *c = &conns[ci];
            for (int s = 0; c->used && s < 2; s++) {
                while (c->q[s].head && c->q[s].head->due <= t) {
                    struct chunk *k = c->q[s].head;
                    size_t off = 0;
                    while (off < k->len) {
                        ssize_t w = write(c->fd[1 - s], k->data + off, k->len - off);
                        if (w <= 0) break;
                        off += (size_t)w;
                    }
                    size_t len = k->len;
                    c->q[s].head = k->next;
                    if (!c->q[s].head) c->q[s].tail = NULL;
                    free(k);
                    if (off < len) { /* the destination is gone */
                        drop(c);
                        break;
                    }
                }
            }
        }
    }
    return 0;
}
