/*
 * loadclient: many WebSocket clients in one epoll loop, for the fan-out
 * benchmark (bench/run.py drives it; see docs/performance.md).
 *
 * Opens N non-blocking connections (source addresses 127.0.0.1..127.0.0.K so
 * 15k+ connections never run short of ephemeral ports), does the HTTP upgrade,
 * optionally sends one masked text frame (the subscribe message), then reads
 * frames, counts them and takes the latency of every frame that carries a
 * "t_us":<wall-clock microseconds> field. A fraction of the connections can be
 * "slow": after the handshake they never read again.
 *
 * Optional publisher (for nchan): pipelined HTTP POSTs of the same event body
 * to a publisher URL at a rate set on stdin.
 *
 * Random tokens (-r K -T N): connection i subscribes to K distinct tokens of
 * 1000..1000+N-1 (chosen from i, the same in every run): it sends
 * {"type":"subscribe","channels":["odin.token.<t>.*",...]} after the upgrade
 * (odinws and the peers keep one index token -> connections from it), or
 * with -X puts them in the path instead (PATH/<t1>/<t2>/..., nchan's
 * multiplexed channels) and publishes each event to PUBPATH/<token>.
 *
 * Centrifugo (-C CHANNEL): Centrifugo's JSON client protocol. After the
 * upgrade the connection sends one frame of newline-separated commands,
 * {"id":1,"connect":{}} and {"id":2,"subscribe":{"channel":"CHANNEL"}} (with
 * -r: one subscribe per token, channel odin.token.<t>.trade); the server may
 * put several replies and pushes in one frame, newline-separated, so each
 * line counts as one message (with the latency of its "t_us", the
 * publication's data); a "{}" line is the server's ping and is answered
 * with "{}"; a line with "error" (a refused connect or subscribe) is counted
 * in "proto_errors".
 *
 * Storm (-F): a reconnection storm's measure (bench/storm.py). No connection
 * is retried; a non-101 answer is counted by status (503, 429, other), and
 * the first "subscribed" reply of each connection is counted with the time
 * it arrived. The stdin command "s" prints those counts (JSON).
 *
 * Compression (-Z): the upgrade offers permessage-deflate (RFC 7692); a
 * message with RSV1 set is inflated (zlib, raw, each message on its own: the
 * server compresses without context takeover) before its "t_us" is read, and
 * counted in "compressed". The client's own messages go out uncompressed.
 *
 * Server-Sent Events (-E): the request is a plain GET of PATH (which carries
 * ?channels=...), the answer must be 200, and each SSE message (ended by a
 * blank line) counts as one frame, with the latency of its "t_us" field.
 *
 * stdin commands (one per line):
 *   w            print the stats of the window since the previous "w" (JSON) and reset
 *   pub R B [N]  publish R events/s in batches of B (R=0 stops), tokens 1000+seq%N (16)
 *   s            print the storm counts (-F): subscribed, refused by status, failed
 *   q            quit
 * stdout: one JSON line when connecting is done, then one per "w".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "../odinws_tools/loadtest/wsframe.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DEAD };

#define MAX_RTOK 8

typedef struct {
    int fd;
    uint16_t tok[MAX_RTOK];
    uint8_t state, slow, tries, subscribed;
    uint8_t *carry;
    uint32_t carry_len, carry_cap;
    uint32_t sse_scan, sse_data;  /* -E: a partial message's scan state (parse_sse) */
    uint64_t frames_win;
} conn_t;

/* Latency histogram: 10 us buckets below 100 ms, then 1 ms buckets to 120 s. */
#define FINE_N 10000
#define COARSE_N 120000
static uint32_t hist_fine[FINE_N], hist_coarse[COARSE_N];
static uint64_t lat_n, lat_max;

static const char *host = "127.0.0.1", *path = "/ws", *subscribe = NULL;
static int port, nconns = 100, nsrc = 4, max_pending = 128, slow_every = 0, lat_every = 1;
static int rcvbuf_slow = 16384;
static int rand_tokens = 0, ntokens = 100, tokens_in_path = 0, sse = 0;
static const char *centrifugo = NULL;  /* -C: the channel of Centrifugo's protocol */
static uint64_t n_proto_errors;
static int deflate_offer = 0;          /* -Z */
static uint64_t n_compressed;          /* messages inflated (-Z) */
static z_stream zin;
static uint8_t *zbuf;
#define ZCAP (1 << 20)
static conn_t *conns;
static int epfd, started, pending, n_open, n_failed, n_closed;
static uint64_t w_frames, w_other, w_bytes, w_frames_slow, w_reads;
static int delay_us;
/* -F: the storm's counts; times in seconds since the first connect */
static int storm, n_subscribed, n_503, n_429, n_status_other, n_upgraded;
static double t_first, t_last_subscribed, t_last_upgraded;
static double w_start, w_cpu_start;
static uint8_t rbuf[1 << 18];

/* publisher */
static int pub_port, pub_fd = -1;
static const char *pub_path = "/pub";
static double pub_rate, pub_t0;
static int pub_batch = 1, pub_tokens = 16;
static uint64_t pub_batches_sent, pub_sent, pub_resp, pub_skipped, pub_seq;
static char pub_tail[16];
static size_t pub_tail_len;

#define TAG_STDIN (-1)
#define TAG_PUB (-2)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static uint64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + ts.tv_nsec / 1000;
}
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void ep(int op, int fd, uint32_t events, int64_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)tag};
    if (epoll_ctl(epfd, op, fd, &ev) < 0 && op != EPOLL_CTL_DEL) perror("epoll_ctl");
}

static void record_latency(uint64_t us) {
    if (us < FINE_N * 10) hist_fine[us / 10]++;
    else if (us / 1000 < COARSE_N) hist_coarse[us / 1000]++;
    else hist_coarse[COARSE_N - 1]++;
    lat_n++;
    if (us > lat_max) lat_max = us;
}

static double percentile(double q) {
    if (!lat_n) return -1;
    uint64_t want = (uint64_t)(q * lat_n), seen = 0;
    if (want >= lat_n) want = lat_n - 1;
    for (int i = 0; i < FINE_N; i++) {
        seen += hist_fine[i];
        if (seen > want) return (i * 10 + 5) / 1000.0;
    }
    for (int i = 0; i < COARSE_N; i++) {
        seen += hist_coarse[i];
        if (seen > want) return i + 0.5;
    }
    return lat_max / 1000.0;
}

static void mask_frame(uint8_t opcode, const uint8_t *data, size_t len, uint8_t *out, size_t *outlen) {
    /* Client frames must be masked (RFC 6455 5.3); len < 65536 here. */
    size_t h = 0;
    uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    out[h++] = 0x80 | opcode;
    if (len < 126) out[h++] = 0x80 | len;
    else { out[h++] = 0x80 | 126; out[h++] = len >> 8; out[h++] = len & 0xff; }
    memcpy(out + h, key, 4); h += 4;
    for (size_t i = 0; i < len; i++) out[h + i] = data[i] ^ key[i & 3];
    *outlen = h + len;
}

static void send_all(int fd, const uint8_t *p, size_t n) {
    /* Small control/handshake writes on a fresh socket: the buffer has room. */
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return; }
        p += w; n -= w;
    }
}

static void start_conn(int i);

/* Connection i's K distinct tokens: a small LCG seeded by i, same every run. */
static void pick_tokens(int i, conn_t *c) {
    uint32_t x = 2654435761u * (uint32_t)(i + 1);
    for (int k = 0; k < rand_tokens; k++) {
        uint16_t t;
        int dup;
        do {
            x = x * 1664525u + 1013904223u;
            t = (uint16_t)((x >> 8) % (uint32_t)ntokens);
            dup = 0;
            for (int j = 0; j < k; j++) dup |= c->tok[j] == t;
        } while (dup);
        c->tok[k] = t;
    }
}

static void conn_fail(int i) {
    conn_t *c = &conns[i];
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) pending--;
    c->carry_len = 0;
    if (c->state == ST_OPEN) { n_open--; n_closed++; c->state = ST_DEAD; return; }
    if (!storm && ++c->tries < 8) { start_conn(i); return; }
    c->state = ST_DEAD;
    n_failed++;
}

static void start_conn(int i) {
    conn_t *c = &conns[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); c->state = ST_DEAD; n_failed++; return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (c->slow) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_slow, sizeof rcvbuf_slow);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000001 + (i % nsrc));
    bind(fd, (struct sockaddr *)&src, sizeof src);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &dst.sin_addr);
    c->fd = fd;
    c->state = ST_CONNECTING;
    pending++;
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        conn_fail(i);
        return;
    }
    ep(EPOLL_CTL_ADD, fd, EPOLLOUT, i);
}

static void carry_put(conn_t *c, const uint8_t *p, size_t n) {
    if (c->carry_len + n > c->carry_cap) {
        c->carry_cap = (c->carry_len + n) * 2 + 256;
        c->carry = realloc(c->carry, c->carry_cap);
    }
    memcpy(c->carry + c->carry_len, p, n);
    c->carry_len += n;
}

static uint64_t parse_tus(const uint8_t *p, size_t n) {
    const uint8_t *f = memmem(p, n, "\"t_us\":", 7);
    if (!f) return 0;
    f += 7;
    uint64_t v = 0;
    while (f < p + n && *f >= '0' && *f <= '9') v = v * 10 + (*f++ - '0');
    return v;
}

/* A compressed message's payload inflated into zbuf (-Z); its length, or
 * -1 (counted as a protocol error) if it does not inflate. */
static long inflate_message(const uint8_t *p, size_t n) {
    static uint8_t tail[4] = {0, 0, 0xff, 0xff};  /* RFC 7692 7.2.2: removed by the sender */
    inflateReset(&zin);
    zin.next_out = zbuf;
    zin.avail_out = ZCAP;
    zin.next_in = (Bytef *)p;
    zin.avail_in = n;
    int rc = inflate(&zin, Z_SYNC_FLUSH);
    if (rc == Z_OK || rc == Z_BUF_ERROR) {
        zin.next_in = tail;
        zin.avail_in = 4;
        rc = inflate(&zin, Z_SYNC_FLUSH);
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) { n_proto_errors++; return -1; }
    n_compressed++;
    return (long)(ZCAP - zin.avail_out);
}

/* One message a connection received, with its t_us (0: not an event):
 * counted, its latency sampled (every lat_every-th frame). */
static void count_message(conn_t *c, uint64_t t, uint64_t now_us) {
    if (!t) { w_other++; return; }
    if (c->slow) { w_frames_slow++; return; }
    w_frames++;
    c->frames_win++;
    if (lat_every <= 1 || (w_frames % lat_every) == 0)
        record_latency(now_us > t ? now_us - t : 0);
}

/* Centrifugo: one frame holds newline-separated replies and pushes; each
 * line is one message, "{}" a ping to answer with "{}". */
static void parse_centrifugo(conn_t *c, const uint8_t *p, size_t n, uint64_t now_us) {
    const uint8_t *end = p + n;
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', end - p);
        size_t len = (nl ? nl : end) - p;
        if (len == 2 && p[0] == '{' && p[1] == '}') {
            uint8_t out[16]; size_t ol;
            mask_frame(1, (const uint8_t *)"{}", 2, out, &ol);
            send_all(c->fd, out, ol);
        } else if (len) {
            uint64_t t = parse_tus(p, len);
            if (!t && memmem(p, len, "\"error\":", 8)) n_proto_errors++;
            count_message(c, t, now_us);
        }
        p += len + 1;
    }
}

/* Parse whole frames from buf; return bytes consumed, (size_t)-1 to close. */
static size_t parse_frames(int i, const uint8_t *buf, size_t len, uint64_t now_us) {
    conn_t *c = &conns[i];
    size_t off = 0;
    ws_frame_t f;
    int got;
    while ((got = ws_frame(buf + off, len - off, &f)) == WS_FRAME_WHOLE) {
        const uint8_t *payload = buf + off + f.head;
        uint64_t plen = f.length;
        uint8_t op = f.opcode;
        if (storm && op == 1 && !c->subscribed &&
            memmem(payload, plen, "\"subscribed\"", 12)) {
            c->subscribed = 1;
            n_subscribed++;
            t_last_subscribed = now_s() - t_first;
        }
        if (deflate_offer && f.rsv1 && (op == 1 || op == 2)) {
            long m = inflate_message(payload, plen);
            if (m >= 0) count_message(c, parse_tus(zbuf, (size_t)m), now_us);
        } else if (centrifugo && (op == 1 || op == 0)) {
            parse_centrifugo(c, payload, plen, now_us);
        } else if (op == 1 || op == 2 || op == 0) {
            count_message(c, parse_tus(payload, plen), now_us);
        } else if (op == 9 && plen <= 125) {
            uint8_t out[160]; size_t ol;
            mask_frame(10, payload, plen, out, &ol);
            send_all(c->fd, out, ol);
        } else if (op == 8) {
            return (size_t)-1;
        }
        off += f.head + plen;
    }
    /* A masked frame from a server is a protocol error (RFC 6455 5.1). */
    return got == WS_FRAME_MASKED ? (size_t)-1 : off;
}

/* Server-Sent Events: whole messages (each ended by a blank line) from buf;
 * bytes consumed. One pass over the bytes: memchr from line end to line end
 * (vectorised; glibc's memmem scans a two-byte needle a byte at a time), a
 * blank line ends a message, and its "t_us" is looked for from its first
 * "data:" line on (not in its id line). A message not all arrived leaves
 * where its scan stopped (the start of its incomplete line, c->sse_scan)
 * and its data line (c->sse_data, +1; 0: none yet), both from its start,
 * which is where the carry starts next read: its complete lines are not
 * scanned again. Every message is counted as before (a comment or the
 * subscribed event, without t_us, as "other"). */
static size_t parse_sse(int i, const uint8_t *buf, size_t len, uint64_t now_us) {
    conn_t *c = &conns[i];
    size_t off = 0, p = c->sse_scan, data = c->sse_data;
    while (p < len) {
        if (buf[p] == '\n') {          /* the blank line: the message [off, p) is whole */
            const uint8_t *m = buf + (data ? data - 1 : off);
            count_message(c, parse_tus(m, buf + p - m), now_us);
            off = p = p + 1;
            data = 0;
            continue;
        }
        if (!data && len - p >= 5 && memcmp(buf + p, "data:", 5) == 0) data = p + 1;
        const uint8_t *nl = memchr(buf + p, '\n', len - p);
        if (!nl) break;                 /* an incomplete line: scanned again when it is whole */
        p = nl + 1 - buf;
    }
    c->sse_scan = (uint32_t)(p - off);
    c->sse_data = data ? (uint32_t)(data - off) : 0;
    return off;
}

static void on_data(int i, const uint8_t *data, size_t n) {
    conn_t *c = &conns[i];
    uint64_t now_us = wall_us();
    w_bytes += n;
    w_reads++;
    const uint8_t *buf = data;
    size_t len = n;
    if (c->carry_len) { carry_put(c, data, n); buf = c->carry; len = c->carry_len; }
    size_t used = sse ? parse_sse(i, buf, len, now_us) : parse_frames(i, buf, len, now_us);
    if (used == (size_t)-1) { conn_fail(i); return; }
    if (buf == c->carry) {
        memmove(c->carry, c->carry + used, len - used);
        c->carry_len = len - used;
    } else if (used < len) {
        carry_put(c, buf + used, len - used);
    }
}

static void on_open(int i) {
    conn_t *c = &conns[i];
    c->state = ST_OPEN;
    c->sse_scan = c->sse_data = 0;
    pending--;
    n_open++;
    if (centrifugo) {
        char msg[1024];
        int n = snprintf(msg, sizeof msg, "{\"id\":1,\"connect\":{}}");
        for (int k = 0; k < (rand_tokens ? rand_tokens : 1); k++) {
            if (rand_tokens)
                n += snprintf(msg + n, sizeof msg - n,
                              "\n{\"id\":%d,\"subscribe\":{\"channel\":\"odin.token.%d.trade\"}}",
                              k + 2, 1000 + c->tok[k]);
            else
                n += snprintf(msg + n, sizeof msg - n,
                              "\n{\"id\":2,\"subscribe\":{\"channel\":\"%s\"}}", centrifugo);
        }
        uint8_t out[4096]; size_t ol;
        mask_frame(1, (const uint8_t *)msg, n, out, &ol);
        send_all(c->fd, out, ol);
    } else if (rand_tokens && !tokens_in_path) {
        char msg[512];
        int n = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"channels\":[");
        for (int k = 0; k < rand_tokens; k++)
            n += snprintf(msg + n, sizeof msg - n, "%s\"odin.token.%d.*\"", k ? "," : "",
                          1000 + c->tok[k]);
        n += snprintf(msg + n, sizeof msg - n, "]}");
        uint8_t out[4096]; size_t ol;
        mask_frame(1, (const uint8_t *)msg, n, out, &ol);
        send_all(c->fd, out, ol);
    } else if (subscribe) {
        uint8_t out[4096]; size_t ol;
        mask_frame(1, (const uint8_t *)subscribe, strlen(subscribe), out, &ol);
        send_all(c->fd, out, ol);
    }
    /* A slow client stops reading here; its socket stays open. */
    if (c->slow) ep(EPOLL_CTL_MOD, c->fd, 0, i);
}

static void on_conn_event(int i, uint32_t events) {
    conn_t *c = &conns[i];
    if (c->state == ST_CONNECTING) {
        int err = 0; socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err || (events & (EPOLLERR | EPOLLHUP))) { conn_fail(i); return; }
        char req[512], target[256];
        int tn = snprintf(target, sizeof target, "%s", path);
        if (rand_tokens && tokens_in_path)
            for (int k = 0; k < rand_tokens; k++)
                tn += snprintf(target + tn, sizeof target - tn, "/%d", 1000 + c->tok[k]);
        int n = sse ? snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                               "Accept: text/event-stream\r\n\r\n", target, host, port)
                    : snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n%s\r\n", target, host, port,
                         deflate_offer ? "Sec-WebSocket-Extensions: permessage-deflate\r\n" : "");
        send_all(c->fd, (uint8_t *)req, n);
        c->state = ST_HANDSHAKE;
        ep(EPOLL_CTL_MOD, c->fd, EPOLLIN, i);
        return;
    }
    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        conn_fail(i);
        return;
    }
    if (c->state == ST_HANDSHAKE) {
        carry_put(c, rbuf, r);
        uint8_t *end = memmem(c->carry, c->carry_len, "\r\n\r\n", 4);
        if (!end) { if (c->carry_len > 8192) conn_fail(i); return; }
        if (c->carry_len < 12 || memcmp(c->carry + 9, sse ? "200" : "101", 3) != 0) {
            if (c->carry_len >= 12 && !memcmp(c->carry + 9, "503", 3)) n_503++;
            else if (c->carry_len >= 12 && !memcmp(c->carry + 9, "429", 3)) n_429++;
            else n_status_other++;
            conn_fail(i);
            return;
        }
        n_upgraded++;
        t_last_upgraded = now_s() - t_first;
        size_t rest = c->carry_len - (end + 4 - c->carry);
        uint8_t *tmp = rest ? malloc(rest) : NULL;
        if (rest) memcpy(tmp, end + 4, rest);
        c->carry_len = 0;
        on_open(i);
        if (rest) { on_data(i, tmp, rest); free(tmp); }
        return;
    }
    /* Delayed-ACK mode, re-armed after each read (the kernel clears it): with
     * immediate ACKs, each read sends an ACK whose loopback processing (the
     * server socket's ACK handling and pending transmits) runs on the client's
     * CPU and made the client, not the server, the bottleneck near 100k reads/s. */
    int zero = 0;
    setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero);
    on_data(i, rbuf, r);
}

/* ---- publisher (HTTP POST, pipelined, keep-alive) ---- */

static int event_body(char *out, size_t cap, uint64_t seq) {
    /* Same shape and size as the events of the other servers (~220 bytes). */
    uint64_t us = wall_us();
    return snprintf(out, cap,
                    "{\"type\":\"event\",\"channel\":\"odin.token.%llu.trade\",\"data\":{\"t_us\":%llu,"
                    "\"seq\":%llu,\"token\":\"%llu\",\"price\":0.00001234,\"amount\":1234.5678,"
                    "\"side\":\"buy\",\"user\":\"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh\"},"
                    "\"ts\":%llu}",
                    (unsigned long long)(1000 + seq % pub_tokens), (unsigned long long)us,
                    (unsigned long long)seq, (unsigned long long)(1000 + seq % pub_tokens),
                    (unsigned long long)(us / 1000));
}

static void pub_connect(void) {
    pub_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(pub_port)};
    inet_pton(AF_INET, host, &dst.sin_addr);
    if (connect(pub_fd, (struct sockaddr *)&dst, sizeof dst) < 0) { perror("pub connect"); exit(2); }
    int one = 1;
    setsockopt(pub_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(pub_fd, F_SETFL, O_NONBLOCK);
    ep(EPOLL_CTL_ADD, pub_fd, EPOLLIN, TAG_PUB);
}

static void pub_read(void) {
    char buf[65536];
    ssize_t r = read(pub_fd, buf, sizeof buf);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        fprintf(stderr, "publisher connection closed\n");
        ep(EPOLL_CTL_DEL, pub_fd, 0, TAG_PUB);
        close(pub_fd);
        pub_connect();
        pub_resp = pub_sent;
        return;
    }
    /* Count status lines; keep a tail so one split across reads is still seen. */
    char joined[sizeof pub_tail + sizeof buf];
    memcpy(joined, pub_tail, pub_tail_len);
    memcpy(joined + pub_tail_len, buf, r);
    size_t n = pub_tail_len + r;
    for (char *p = joined; (p = memmem(p, joined + n - p, "HTTP/1.1 ", 9)); p += 9) pub_resp++;
    pub_tail_len = n < 8 ? n : 8;
    memcpy(pub_tail, joined + n - pub_tail_len, pub_tail_len);
}

static void pub_tick(void) {
    if (pub_rate <= 0 || pub_fd < 0) return;
    double due = (now_s() - pub_t0) * pub_rate / pub_batch + 1; /* first at t0 */
    if (due - pub_batches_sent > pub_rate / pub_batch) { /* >1 s behind: drop the backlog */
        uint64_t skip = (uint64_t)due - 1 - pub_batches_sent;
        pub_skipped += skip * pub_batch;
        pub_batches_sent += skip;
    }
    while (pub_batches_sent < (uint64_t)due) {
        /* Bound what is in flight so an overloaded server is not buried. */
        if (pub_sent - pub_resp > (uint64_t)(4 * pub_batch + 16)) return;
        static char req[1 << 16];
        size_t off = 0;
        for (int b = 0; b < pub_batch; b++) {
            char body[512], target[128];
            uint64_t seq = pub_seq++;
            int bl = event_body(body, sizeof body, seq);
            if (tokens_in_path)
                snprintf(target, sizeof target, "%s/%llu", pub_path,
                         (unsigned long long)(1000 + seq % pub_tokens));
            else
                snprintf(target, sizeof target, "%s", pub_path);
            off += snprintf(req + off, sizeof req - off,
                            "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                            "Content-Length: %d\r\n\r\n%s", target, host, bl, body);
        }
        size_t done = 0;
        while (done < off) {
            ssize_t w = write(pub_fd, req + done, off - done);
            if (w < 0) {
                if (errno == EAGAIN) {
                    fd_set fs; FD_ZERO(&fs); FD_SET(pub_fd, &fs);
                    select(pub_fd + 1, NULL, &fs, NULL, NULL);
                    continue;
                }
                perror("pub write");
                return;
            }
            done += w;
        }
        pub_sent += pub_batch;
        pub_batches_sent++;
    }
}

/* ---- stdin commands and reports ---- */

static void report_window(void) {
    double t = now_s(), dt = t - w_start, cpu = cpu_s();
    uint64_t starved = 0, active = 0;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state == ST_OPEN && !c->slow) {
            active++;
            if (!c->frames_win) starved++;
        }
        c->frames_win = 0;
    }
    printf("{\"dt\":%.4f,\"frames\":%llu,\"frames_slow\":%llu,\"other_frames\":%llu,"
           "\"bytes\":%llu,\"reads\":%llu,\"open\":%d,\"closed\":%d,\"failed\":%d,\"active_fast\":%llu,"
           "\"starved\":%llu,\"lat_n\":%llu,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"max_ms\":%.3f,\"cpu\":%.4f,\"pub_sent\":%llu,\"pub_resp\":%llu,\"pub_skipped\":%llu,"
           "\"proto_errors\":%llu,\"compressed\":%llu}\n",
           dt, (unsigned long long)w_frames, (unsigned long long)w_frames_slow,
           (unsigned long long)w_other, (unsigned long long)w_bytes, (unsigned long long)w_reads, n_open, n_closed, n_failed,
           (unsigned long long)active, (unsigned long long)starved, (unsigned long long)lat_n,
           percentile(0.5), percentile(0.9), percentile(0.99), lat_max / 1000.0,
           dt > 0 ? (cpu - w_cpu_start) / dt : 0, (unsigned long long)pub_sent,
           (unsigned long long)pub_resp, (unsigned long long)pub_skipped,
           (unsigned long long)n_proto_errors, (unsigned long long)n_compressed);
    fflush(stdout);
    w_frames = w_other = w_bytes = w_frames_slow = w_reads = lat_n = lat_max = 0;
    memset(hist_fine, 0, sizeof hist_fine);
    memset(hist_coarse, 0, sizeof hist_coarse);
    w_start = t;
    w_cpu_start = cpu;
}

static void report_storm(void) {
    printf("{\"connections\":%d,\"upgraded\":%d,\"subscribed\":%d,\"refused_503\":%d,"
           "\"refused_429\":%d,\"status_other\":%d,\"failed\":%d,\"closed\":%d,"
           "\"last_upgraded_s\":%.3f,\"last_subscribed_s\":%.3f}\n",
           nconns, n_upgraded, n_subscribed, n_503, n_429, n_status_other, n_failed, n_closed,
           t_last_upgraded, t_last_subscribed);
    fflush(stdout);
}

static char cmdbuf[4096];
static size_t cmdlen;

static int on_stdin(void) {
    ssize_t r = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (r <= 0) return 0;
    cmdlen += r;
    char *nl;
    while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
        *nl = 0;
        if (cmdbuf[0] == 'w') report_window();
        else if (cmdbuf[0] == 's') report_storm();
        else if (cmdbuf[0] == 'q') return 0;
        else if (!strncmp(cmdbuf, "pub ", 4)) {
            double r2; int b, nt = 16;
            if (sscanf(cmdbuf + 4, "%lf %d %d", &r2, &b, &nt) >= 2 && b > 0 && nt > 0) {
                pub_rate = r2; pub_batch = b; pub_tokens = nt; pub_t0 = now_s();
                pub_batches_sent = 0;
            }
        }
        size_t used = nl + 1 - cmdbuf;
        memmove(cmdbuf, nl + 1, cmdlen - used);
        cmdlen -= used;
    }
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: loadclient -p PORT [-h HOST] [-u PATH] [-n CONNS] [-s SRCADDRS] "
                    "[-m MAXPENDING] [-S SUBSCRIBE_JSON] [-k SLOW_EVERY] [-l LAT_EVERY] "
                    "[-P PUBPORT] [-U PUBPATH] [-r RANDOM_TOKENS -T TOKENS [-X]] [-E] [-C CHANNEL] [-F] [-Z]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "h:p:u:n:s:m:S:k:l:P:U:d:r:T:XEC:FZ")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'n': nconns = atoi(optarg); break;
        case 's': nsrc = atoi(optarg); break;
        case 'm': max_pending = atoi(optarg); break;
        case 'S': subscribe = optarg; break;
        case 'k': slow_every = atoi(optarg); break;
        case 'l': lat_every = atoi(optarg); break;
        case 'P': pub_port = atoi(optarg); break;
        case 'U': pub_path = optarg; break;
        case 'd': delay_us = atoi(optarg); break;
        case 'r': rand_tokens = atoi(optarg); break;
        case 'T': ntokens = atoi(optarg); break;
        case 'X': tokens_in_path = 1; break;
        case 'E': sse = 1; break;
        case 'C': centrifugo = optarg; break;
        case 'F': storm = 1; break;
        case 'Z': deflate_offer = 1; break;
        default: usage();
        }
    }
    if (!port || rand_tokens < 0 || rand_tokens > MAX_RTOK || rand_tokens > ntokens || ntokens > 65535)
        usage();
    if (deflate_offer) {
        zbuf = malloc(ZCAP);
        if (!zbuf || inflateInit2(&zin, -15) != Z_OK) { fprintf(stderr, "zlib init failed\n"); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nconns + 64 > rl.rlim_cur) {
        fprintf(stderr, "RLIMIT_NOFILE %llu too low for %d connections\n",
                (unsigned long long)rl.rlim_cur, nconns);
        return 2;
    }
    conns = calloc(nconns, sizeof *conns);
    epfd = epoll_create1(0);
    fcntl(0, F_SETFL, O_NONBLOCK);
    ep(EPOLL_CTL_ADD, 0, EPOLLIN, TAG_STDIN);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        /* every k-th connection is slow: spread evenly over the order of connects */
        conns[i].slow = slow_every > 0 && (i % slow_every) == slow_every - 1;
        if (rand_tokens) pick_tokens(i, &conns[i]);
    }
    if (pub_port) pub_connect();

    double t0 = now_s();
    t_first = t0;
    int connect_reported = 0;
    w_start = t0;
    w_cpu_start = cpu_s();
    static struct epoll_event evs[16384];
    for (;;) {
        while (started < nconns && pending < max_pending) start_conn(started++);
        if (!connect_reported && started == nconns && pending == 0) {
            printf("{\"connected\":%d,\"failed\":%d,\"connect_s\":%.3f}\n", n_open, n_failed,
                   now_s() - t0);
            fflush(stdout);
            connect_reported = 1;
        }
        int timeout = pub_rate > 0 ? 1 : 50;
        /* -d: let data pile up a little so one read takes several frames */
        if (delay_us && connect_reported) usleep(delay_us);
        int n = epoll_wait(epfd, evs, 16384, timeout);
        for (int k = 0; k < n; k++) {
            int64_t tag = (int64_t)evs[k].data.u64;
            if (tag == TAG_STDIN) {
                if (!on_stdin()) goto out;
            } else if (tag == TAG_PUB) pub_read();
            else on_conn_event((int)tag, evs[k].events);
        }
        pub_tick();
    }
out:
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) close(conns[i].fd);
    return 0;
}
