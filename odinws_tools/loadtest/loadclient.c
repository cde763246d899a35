/*
 * odinws-loadclient: one native worker of odinws-loadtest (--client native),
 * the same job as odinws_tools/loadtest/worker.py at a fraction of its CPU,
 * so that `make capacity` measures the server and not its client.
 *
 * Connection g (0..N-1) belongs to worker g % W and starts at START + g/RAMP
 * (epoch seconds), from source address g % len(sources). Each one connects,
 * upgrades (a fixed Sec-WebSocket-Key whose Sec-WebSocket-Accept is checked),
 * sends the --subscribe messages (masked text frames) and waits for as many
 * "subscribed" answers. Then every event is checked as worker.py does:
 *   - end-to-end latency (receive time minus the envelope's "ts", ms) into a
 *     log-bucketed histogram with stats.Histogram's buckets (about 2%);
 *   - per connection and channel, data.<seq-field> must go up by one: a skip
 *     is a gap (its size), one at or below the last a duplicate;
 *   - events with SUBSCRIBED < ts <= HOLD_END are counted per connection
 *     (stats.Completeness compares them with every distinct event seen);
 *   - every distinct (channel, seq) with its ts, for that comparison.
 * Failures to open are counted by reason (refused, connect_timeout,
 * http_503, bad_accept, subscribe_error_<code>, ...), connections lost after
 * subscribing by reason (dropped, closed_<code>), the server's gap notices
 * ({"type":"gap"}) by their reason.
 *
 * stdout: JSON lines, {"kind":"tick",...} every second on START + i and
 * {"kind":"final",...} at the end, the shapes worker.py sends over its pipe
 * (histograms as [counts, n, total, max]). stdin: "stop" or end of file
 * stops early. At CLOSE_AT every connection is closed (1000) and waited for
 * at most 5 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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

#include "loadclient_checks.h"
#include "wsframe.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define CLOSE_WAIT 5.0
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="   /* RFC 6455 1.3, for WS_KEY */
#define TAG_STDIN UINT64_MAX

enum { IDLE, CONNECTING, UPGRADING, SUBSCRIBING, OPEN, ENDED };

typedef struct {
    int fd, g, acks;
    uint8_t state, closing, subscribed;
    double t0, t1;              /* monotonic: connect started, 101 read */
    double t_sub_ms;            /* epoch ms of the last "subscribed"; < 0: none */
    uint32_t in_window, events, gaps, dups, nlast;
    int64_t *last;              /* last seq per channel id, INT64_MIN: none yet */
    uint8_t *carry, *frag;
    uint32_t carry_len, carry_cap, frag_len, frag_cap;
} conn_t;

/* ---- settings ---- */
static struct sockaddr_in dst;
static const char *path = "/ws", *host_header = "127.0.0.1", *seq_field = "seq";
static int widx, nworkers = 1, nconns_all, max_pending = 500;
static double ramp = 500, t_start, t_hold_end, t_close_at, connect_timeout = 10;
static struct in_addr sources[256];
static int nsrc;
static char *subs[64];
static int nsubs;

/* ---- state ---- */
static conn_t *conns;
static int nconns, next_local, pending, up, lost_n, epfd, stopping;
static uint64_t no_seq, malformed, tick_events;
static hist_t tick_hist, hs_hist, sub_hist;
static counts_t failed, lost, gap_notices;
static uint8_t rbuf[1 << 18];

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static double epoch(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void send_frame(conn_t *c, uint8_t opcode, const char *data, size_t len) {
    uint8_t out[8192 + 14];
    size_t h = 0;
    if (len > 8192) return;
    uint32_t key = (uint32_t)rand();
    uint8_t *k = (uint8_t *)&key;
    out[h++] = 0x80 | opcode;
    if (len < 126) out[h++] = 0x80 | len;
    else { out[h++] = 0x80 | 126; out[h++] = len >> 8; out[h++] = len & 0xff; }
    memcpy(out + h, k, 4); h += 4;
    for (size_t i = 0; i < len; i++) out[h + i] = data[i] ^ k[i & 3];
    /* Small writes on a socket whose buffer has room; a short one is a dead peer. */
    if (write(c->fd, out, h + len) < 0 && errno != EAGAIN) return;
}

static void put(uint8_t **buf, uint32_t *len, uint32_t *cap, const uint8_t *p, size_t n) {
    if (*len + n > *cap) {
        *cap = (*len + n) * 2 + 256;
        *buf = realloc(*buf, *cap);
    }
    memcpy(*buf + *len, p, n);
    *len += n;
}

/* Closing the descriptor also takes it out of the epoll set. The buffers are
 * freed by release(), outside the parsing that may still be reading them. */
static void drop_fd(conn_t *c) {
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
}

static void release(conn_t *c) {
    free(c->carry); free(c->frag); free(c->last);
    c->carry = c->frag = NULL;
    c->last = NULL;
    c->carry_len = c->carry_cap = c->frag_len = c->frag_cap = c->nlast = 0;
}

/* Could not open (or subscribe): counted by reason, never retried. */
static void fail(conn_t *c, const char *reason) {
    if (c->state >= OPEN) return;
    counts_add(&failed, reason, 1);
    if (c->state != IDLE) pending--;
    c->state = ENDED;
    drop_fd(c);
}

/* Ended after opening: lost (unless we were closing it) with its reason. */
static void end(conn_t *c, const char *reason) {
    if (c->state < OPEN) {
        fail(c, c->state == CONNECTING ? reason : "closed_during_handshake");
        return;
    }
    if (c->state == OPEN && !c->closing) {
        counts_add(&lost, reason, 1);
        lost_n++;
    }
    c->state = ENDED;
    drop_fd(c);
}

static const char *errno_reason(int err) {
    static char name[32];
    if (err == ECONNREFUSED) return "refused";
    if (err == ECONNRESET) return "reset";
    const char *s = strerrorname_np(err);
    snprintf(name, sizeof name, "%s", s ? s : "oserror");
    for (char *p = name; *p; p++) *p = (*p >= 'A' && *p <= 'Z') ? *p + 32 : *p;
    return name;
}

static void start(conn_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    c->t0 = mono();
    if (fd < 0) { counts_add(&failed, errno_reason(errno), 1); c->state = ENDED; return; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsrc) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr = sources[c->g % nsrc]};
        bind(fd, (struct sockaddr *)&src, sizeof src);
    }
    c->fd = fd;
    c->state = CONNECTING;
    pending++;
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
        fail(c, errno_reason(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void connected(conn_t *c) {
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) { fail(c, errno_reason(err)); return; }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, host_header);
    if (write(c->fd, req, n) != n) { fail(c, errno_reason(errno)); return; }
    c->state = UPGRADING;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* ---- events ---- */

static void on_event(conn_t *c, const msg_t *m, double now_ms) {
    hist_add(&tick_hist, now_ms - m->ts);
    tick_events++;
    c->events++;
    int64_t seq;
    if (!m->data || json_int_member(m->data, m->data_len, seq_field, &seq) != 0) {
        no_seq++;
        return;
    }
    uint32_t ch = channel_id(m->channel, m->channel_len);
    if (ch >= c->nlast) {
        uint32_t n = ch + 16;
        c->last = realloc(c->last, n * sizeof *c->last);
        for (uint32_t i = c->nlast; i < n; i++) c->last[i] = INT64_MIN;
        c->nlast = n;
    }
    int64_t last = c->last[ch];
    if (last != INT64_MIN) {
        if (seq <= last) { c->dups++; channel_dup(ch); return; }
        if (seq > last + 1) { c->gaps += seq - last - 1; channel_gap(ch, seq - last - 1); }
    }
    c->last[ch] = seq;
    if (c->t_sub_ms >= 0 && c->t_sub_ms < m->ts && m->ts <= t_hold_end * 1000.0) c->in_window++;
    seen_add(ch, seq, m->ts);
}

static void on_text(conn_t *c, const uint8_t *p, size_t n, double now_ms) {
    msg_t m;
    if (json_envelope(p, n, &m) != 0) { malformed++; return; }
    if (m.type_len == 5 && !memcmp(m.type, "event", 5) && m.has_ts && m.channel) {
        on_event(c, &m, now_ms);
    } else if (m.type_len == 10 && !memcmp(m.type, "subscribed", 10) && c->acks > 0) {
        if (--c->acks == 0 && c->state == SUBSCRIBING) {
            c->t_sub_ms = epoch() * 1000.0;
            hist_add(&sub_hist, (mono() - c->t1) * 1000.0);
            c->state = OPEN;
            pending--;
            up++;
        }
    } else if (m.type_len == 3 && !memcmp(m.type, "gap", 3)) {
        /* The server says it skipped events: counted by reason (announced). */
        char reason[48];
        if (m.reason) snprintf(reason, sizeof reason, "%.*s", (int)m.reason_len, m.reason);
        else snprintf(reason, sizeof reason, "None");   /* as the Python client's str(None) */
        counts_add(&gap_notices, reason, 1);
    } else if (m.type_len == 5 && !memcmp(m.type, "error", 5) && c->state == SUBSCRIBING) {
        char reason[64];
        snprintf(reason, sizeof reason, "subscribe_error_%.*s", (int)m.code_len, m.code);
        fail(c, reason);
    }
}

/* Whole frames of buf; bytes consumed, or -1 when the connection ended. */
static ssize_t frames(conn_t *c, const uint8_t *buf, size_t len) {
    double now_ms = epoch() * 1000.0;
    size_t off = 0;
    ws_frame_t f;
    int got;
    while ((got = ws_frame(buf + off, len - off, &f)) == WS_FRAME_WHOLE) {
        const uint8_t *payload = buf + off + f.head;
        uint64_t plen = f.length;
        uint8_t op = f.opcode;
        off += f.head + plen;
        if (op == 1 && f.fin) {
            on_text(c, payload, plen, now_ms);
        } else if (op == 1 || op == 0) {
            if (op == 1) c->frag_len = 0;
            put(&c->frag, &c->frag_len, &c->frag_cap, payload, plen);
            if (f.fin) { on_text(c, c->frag, c->frag_len, now_ms); c->frag_len = 0; }
        } else if (op == 9) {
            send_frame(c, 10, (const char *)payload, plen);
        } else if (op == 8) {
            char reason[32];
            int code = plen >= 2 ? (payload[0] << 8) | payload[1] : 1005;
            snprintf(reason, sizeof reason, "closed_%d", code);
            if (!c->closing) send_frame(c, 8, (const char *)payload, plen >= 2 ? 2 : 0);
            end(c, reason);
            return -1;
        }
        if (c->state == ENDED) return -1;
    }
    if (got == WS_FRAME_MASKED) {
        /* A server must never mask (RFC 6455 5.1): the client fails it. */
        end(c, "masked_frame");
        return -1;
    }
    return off;
}

static void upgrade(conn_t *c) {
    uint8_t *head = c->carry, *stop = memmem(head, c->carry_len, "\r\n\r\n", 4);
    if (!stop) { if (c->carry_len > 65536) fail(c, "bad_response"); return; }
    size_t hlen = stop - head;
    char status[8] = "?";
    const uint8_t *sp = memchr(head, ' ', hlen);
    if (sp && sp + 4 <= stop) { memcpy(status, sp + 1, 3); status[3] = 0; }
    if (strcmp(status, "101")) {
        char reason[16];
        snprintf(reason, sizeof reason, "http_%s", status);
        fail(c, reason);
        return;
    }
    int accepted = 0;
    for (const uint8_t *line = head; line < stop;) {
        const uint8_t *eol = memmem(line, stop - line, "\r\n", 2);
        if (!eol) eol = stop;
        size_t ll = eol - line;
        if (ll > 21 && !strncasecmp((const char *)line, "sec-websocket-accept:", 21)) {
            const uint8_t *v = line + 21;
            while (v < eol && *v == ' ') v++;
            while (eol > v && eol[-1] == ' ') eol--;
            accepted = (size_t)(eol - v) == strlen(WS_ACCEPT) && !memcmp(v, WS_ACCEPT, eol - v);
        }
        line = eol + 2;
    }
    if (!accepted) { fail(c, "bad_accept"); return; }
    c->t1 = mono();
    hist_add(&hs_hist, (c->t1 - c->t0) * 1000.0);
    c->state = SUBSCRIBING;
    c->acks = nsubs;
    for (int i = 0; i < nsubs; i++) send_frame(c, 1, subs[i], strlen(subs[i]));
    size_t rest = c->carry_len - hlen - 4;
    memmove(c->carry, stop + 4, rest);
    c->carry_len = rest;
}

static void parse(conn_t *c);

static void readable(conn_t *c) {
    parse(c);
    if (c->state == ENDED) release(c);
}

static void parse(conn_t *c) {
    ssize_t r = read(c->fd, rbuf, sizeof rbuf);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        end(c, "dropped");
        return;
    }
    if (c->state == UPGRADING) {
        put(&c->carry, &c->carry_len, &c->carry_cap, rbuf, r);
        upgrade(c);
        if (c->state != SUBSCRIBING || !c->carry_len) return;
        r = 0;   /* frames after the 101 are in carry */
    }
    const uint8_t *buf = rbuf;
    size_t len = r;
    if (c->carry_len) {
        if (r) put(&c->carry, &c->carry_len, &c->carry_cap, rbuf, r);
        buf = c->carry; len = c->carry_len;
    }
    ssize_t used = frames(c, buf, len);
    if (used < 0) return;
    if (buf == c->carry) {
        memmove(c->carry, c->carry + used, len - used);
        c->carry_len = len - used;
    } else if ((size_t)used < len) {
        put(&c->carry, &c->carry_len, &c->carry_cap, buf + used, len - used);
    }
}

/* ---- schedule, timeouts, reports ---- */

static void timeouts(double now) {
    for (int i = 0; i < next_local; i++) {
        conn_t *c = &conns[i];
        if (c->state == CONNECTING && now - c->t0 > connect_timeout) fail(c, "connect_timeout");
        else if (c->state == UPGRADING && now - c->t0 > connect_timeout) fail(c, "handshake_timeout");
        else if (c->state == SUBSCRIBING && now - c->t1 > connect_timeout) fail(c, "subscribe_timeout");
        else continue;
        release(c);
    }
}

static void tick(int i, double *cpu0) {
    double cpu = cpu_s();
    printf("{\"kind\":\"tick\",\"worker\":%d,\"i\":%d,\"up\":%d,\"pending\":%d,\"failed\":%llu,"
           "\"lost\":%d,\"events\":%llu,\"hist\":", widx, i, up - lost_n, pending,
           (unsigned long long)counts_total(&failed), lost_n, (unsigned long long)tick_events);
    hist_print(&tick_hist, stdout);
    printf(",\"cpu\":%.4f}\n", cpu - *cpu0);
    fflush(stdout);
    hist_reset(&tick_hist);
    tick_events = 0;
    *cpu0 = cpu;
}

/* Peak RSS (KiB) of this program: VmHWM, not getrusage's ru_maxrss, which
 * Linux carries over exec from the parent (the Python process that started it). */
static long peak_rss_kib(void) {
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return kib;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) { kib = atol(line + 6); break; }
    fclose(f);
    return kib;
}

static void final(void) {
    printf("{\"kind\":\"final\",\"worker\":%d,\"failed\":", widx);
    counts_print(&failed, stdout);
    printf(",\"lost\":");
    counts_print(&lost, stdout);
    printf(",\"gap_notices\":");
    counts_print(&gap_notices, stdout);
    printf(",\"handshake\":");
    hist_print(&hs_hist, stdout);
    printf(",\"subscribe\":");
    hist_print(&sub_hist, stdout);
    printf(",\"no_seq\":%llu,\"malformed\":%llu,", (unsigned long long)no_seq,
           (unsigned long long)malformed);
    channels_print(stdout);
    printf(",\"cpu\":%.4f,\"max_rss_kib\":%ld,\"conns\":[", cpu_s(), peak_rss_kib());
    int first = 1;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->t_sub_ms < 0) continue;
        printf("%s[%d,%.3f,%u,%u,%u,%u]", first ? "" : ",", c->g, c->t_sub_ms, c->in_window,
               c->events, c->gaps, c->dups);
        first = 0;
    }
    printf("]}\n");
    fflush(stdout);
}

static void close_all(void) {
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        if (c->state == OPEN) {
            c->closing = 1;
            send_frame(c, 8, "\x03\xe8", 2);
        } else if (c->state != ENDED && c->state != IDLE) {
            fail(c, "not_open_at_close");
        }
    }
}

static int open_left(void) {
    int n = 0;
    for (int i = 0; i < nconns; i++) n += conns[i].state == OPEN;
    return n;
}

static int on_stdin(void) {
    char buf[256];
    ssize_t r = read(0, buf, sizeof buf);
    if (r == 0 || (r > 0 && memmem(buf, r, "stop", 4))) return 0;
    return 1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: odinws-loadclient --host IP --port P --start EPOCH --hold-end EPOCH "
            "--close-at EPOCH --subscribe JSON [--subscribe JSON ...] [--path P] "
            "[--host-header H] [--index I --workers W] [--connections N] [--ramp R] "
            "[--source IP ...] [--seq-field F] [--connect-timeout S] [--max-pending N]\n");
    exit(2);
}

static void arguments(int argc, char **argv) {
    dst.sin_family = AF_INET;
    int have_host = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(k, "--host")) have_host = inet_pton(AF_INET, v, &dst.sin_addr) == 1;
        else if (!strcmp(k, "--port")) dst.sin_port = htons(atoi(v));
        else if (!strcmp(k, "--path")) path = v;
        else if (!strcmp(k, "--host-header")) host_header = v;
        else if (!strcmp(k, "--index")) widx = atoi(v);
        else if (!strcmp(k, "--workers")) nworkers = atoi(v);
        else if (!strcmp(k, "--connections")) nconns_all = atoi(v);
        else if (!strcmp(k, "--ramp")) ramp = atof(v);
        else if (!strcmp(k, "--start")) t_start = atof(v);
        else if (!strcmp(k, "--hold-end")) t_hold_end = atof(v);
        else if (!strcmp(k, "--close-at")) t_close_at = atof(v);
        else if (!strcmp(k, "--seq-field")) seq_field = v;
        else if (!strcmp(k, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(k, "--max-pending")) max_pending = atoi(v);
        else if (!strcmp(k, "--subscribe") && nsubs < 64) subs[nsubs++] = (char *)v;
        else if (!strcmp(k, "--source") && nsrc < 256) {
            if (inet_pton(AF_INET, v, &sources[nsrc++]) != 1) usage();
        } else usage();
    }
    if (!have_host || !dst.sin_port || !nsubs || nworkers < 1 || widx < 0 || widx >= nworkers ||
        nconns_all < 1 || ramp <= 0 || !t_start || t_hold_end < t_start || t_close_at < t_hold_end)
        usage();
}

int main(int argc, char **argv) {
    arguments(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN);   /* the parent decides when to stop (stdin) */
    nconns = (nconns_all - widx + nworkers - 1) / nworkers;
    /* The soft limit up to the hard one; the hard one up to what is needed
     * if this process may (CAP_SYS_RESOURCE: EPERM otherwise, then the
     * parent must spread the connections over more workers). */
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)nconns + 64) {
        struct rlimit more = {(rlim_t)nconns + 64, (rlim_t)nconns + 64};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0) rl = more;
    }
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if ((rlim_t)nconns + 64 > rl.rlim_cur) {
        fprintf(stderr, "odinws-loadclient: RLIMIT_NOFILE %llu is too low for %d connections\n",
                (unsigned long long)rl.rlim_cur, nconns);
        return 2;
    }
    srand((unsigned)getpid());
    conns = calloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].g = widx + i * nworkers;
        conns[i].t_sub_ms = -1;
    }
    epfd = epoll_create1(0);
    fcntl(0, F_SETFL, O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = TAG_STDIN};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);

    static struct epoll_event evs[4096];
    double cpu0 = cpu_s(), close_started = 0, last_timeouts = 0;
    int ticks = 0;
    for (;;) {
        double now = epoch();
        if (!stopping && now >= t_close_at) stopping = 1;
        while (!stopping && next_local < nconns && pending < max_pending && now < t_hold_end &&
               now >= t_start + conns[next_local].g / ramp)
            start(&conns[next_local++]);
        if (stopping && !close_started) { close_all(); close_started = mono(); }
        if (close_started && (!open_left() || mono() - close_started > CLOSE_WAIT)) break;
        if (mono() - last_timeouts > 0.1) { timeouts(mono()); last_timeouts = mono(); }
        while (now >= t_start + ticks + 1) tick(++ticks, &cpu0);
        double wake = t_start + ticks + 1;
        if (next_local < nconns && !stopping) {
            double at = t_start + conns[next_local].g / ramp;
            if (at < wake) wake = at;
        }
        int ms = (int)((wake - epoch()) * 1000) + 1;
        if (ms > 100) ms = 100;
        if (ms < 0) ms = 0;
        int n = epoll_wait(epfd, evs, 4096, ms);
        for (int k = 0; k < n; k++) {
            uint64_t tag = evs[k].data.u64;
            if (tag == TAG_STDIN) {
                if (!on_stdin()) {
                    stopping = 1;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                }
                continue;
            }
            conn_t *c = &conns[tag];
            if (c->fd < 0) continue;
            if (c->state == CONNECTING) connected(c);
            else readable(c);
        }
    }
    for (int i = 0; i < nconns; i++)
        if (conns[i].fd >= 0) { close(conns[i].fd); conns[i].fd = -1; }
    final();
    return 0;
}
