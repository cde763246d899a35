/*
 * What odinws-loadclient (loadclient.c) measures, apart from its sockets:
 * the JSON scan of an envelope, the latency histogram (the buckets of
 * odinws_tools/loadtest/stats.py's Histogram, so the Python report merges
 * them), failure counts by reason, and per channel the gaps, duplicates and
 * every distinct (seq, ts) seen. Static functions: one compilation unit.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- JSON: the members of one envelope, without building anything ---- */

typedef struct {
    const uint8_t *type, *channel, *data, *code, *reason;
    size_t type_len, channel_len, data_len, code_len, reason_len;
    double ts;
    int has_ts;
} msg_t;

static const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at '"': the position after the closing quote, NULL if there is none. */
static const uint8_t *skip_string(const uint8_t *p, const uint8_t *end) {
    for (p++; p < end; p++) {
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* The end of the value at p (strings, nested objects and arrays, literals). */
static const uint8_t *skip_value(const uint8_t *p, const uint8_t *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') { p = skip_string(p, end); if (!p) return NULL; continue; }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
            p++;
        }
        return NULL;
    }
    const uint8_t *s = p;
    while (p < end && !strchr(",}] \t\r\n", *p)) p++;
    return p > s ? p : NULL;
}

typedef void (*member_fn)(const uint8_t *key, size_t klen, const uint8_t *v, size_t vlen,
                          void *arg);

/* Calls fn for each member of the object in [p, end); 0, or -1 if malformed. */
static int json_members(const uint8_t *p, const uint8_t *end, member_fn fn, void *arg) {
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return -1;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return 0;
    while (p < end) {
        if (*p != '"') return -1;
        const uint8_t *k = p + 1, *ke = skip_string(p, end);
        if (!ke) return -1;
        p = skip_ws(ke, end);
        if (p >= end || *p != ':') return -1;
        const uint8_t *v = skip_ws(p + 1, end), *ve = skip_value(v, end);
        if (!ve) return -1;
        fn(k, ke - 1 - k, v, ve - v, arg);
        p = skip_ws(ve, end);
        if (p < end && *p == '}') return 0;
        if (p >= end || *p != ',') return -1;
        p = skip_ws(p + 1, end);
    }
    return -1;
}

/* An integer literal (no fraction, no exponent): 0 and *out, else -1. */
static int json_int(const uint8_t *v, size_t n, int64_t *out) {
    size_t i = 0;
    int neg = 0;
    if (i < n && v[i] == '-') { neg = 1; i++; }
    if (i == n) return -1;
    int64_t x = 0;
    for (; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = neg ? -x : x;
    return 0;
}

static void envelope_member(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, void *arg) {
    msg_t *m = arg;
    int str = vl >= 2 && v[0] == '"';
    if (kl == 4 && !memcmp(k, "type", 4) && str) { m->type = v + 1; m->type_len = vl - 2; }
    else if (kl == 7 && !memcmp(k, "channel", 7) && str) { m->channel = v + 1; m->channel_len = vl - 2; }
    else if (kl == 4 && !memcmp(k, "data", 4)) { m->data = v; m->data_len = vl; }
    else if (kl == 6 && !memcmp(k, "reason", 6) && str) { m->reason = v + 1; m->reason_len = vl - 2; }
    else if (kl == 4 && !memcmp(k, "code", 4)) {
        m->code = str ? v + 1 : v;
        m->code_len = str ? vl - 2 : vl;
    } else if (kl == 2 && !memcmp(k, "ts", 2) && vl < 32 && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9'))) {
        char num[32];
        memcpy(num, v, vl);
        num[vl] = 0;
        char *e;
        m->ts = strtod(num, &e);
        m->has_ts = *e == 0;
    }
}

static int json_envelope(const uint8_t *p, size_t n, msg_t *m) {
    memset(m, 0, sizeof *m);
    return json_members(p, p + n, envelope_member, m);
}

typedef struct { const char *key; size_t klen; const uint8_t *v; size_t vlen; } find_t;

static void find_member(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, void *arg) {
    find_t *f = arg;
    if (kl == f->klen && !memcmp(k, f->key, kl)) { f->v = v; f->vlen = vl; }
}

/* The integer member `key` of the object in [p, p+n): 0 and *out, else -1. */
static int json_int_member(const uint8_t *p, size_t n, const char *key, int64_t *out) {
    find_t f = {key, strlen(key), NULL, 0};
    if (json_members(p, p + n, find_member, &f) != 0 || !f.v) return -1;
    return json_int(f.v, f.vlen, out);
}

/* ---- histogram: stats.Histogram's buckets, int(log(ms / 0.01) * 50) ---- */

#define HIST_N 1600   /* up to about 0.01 ms * e^32: far beyond any latency */

typedef struct { uint64_t c[HIST_N], n; double total, max; } hist_t;

static void hist_add(hist_t *h, double ms) {
    int i = ms > 0.01 ? (int)(log(ms / 0.01) * 50) : 0;
    if (i >= HIST_N) i = HIST_N - 1;
    h->c[i]++;
    h->n++;
    h->total += ms;
    if (ms > h->max) h->max = ms;
}

static void hist_reset(hist_t *h) { memset(h, 0, sizeof *h); }

/* [counts, n, total, max], as Histogram.to_wire (counts' keys as strings). */
static void hist_print(const hist_t *h, FILE *f) {
    fputs("[{", f);
    int first = 1;
    for (int i = 0; i < HIST_N; i++)
        if (h->c[i]) { fprintf(f, "%s\"%d\":%llu", first ? "" : ",", i, (unsigned long long)h->c[i]); first = 0; }
    fprintf(f, "},%llu,%.17g,%.17g]", (unsigned long long)h->n, h->total, h->max);
}

/* ---- counts by reason ---- */

typedef struct { char name[64][48]; uint64_t n[64]; int len; } counts_t;

static void counts_add(counts_t *c, const char *name, uint64_t n) {
    int i;
    for (i = 0; i < c->len; i++)
        if (!strcmp(c->name[i], name)) break;
    if (i == c->len) {
        if (c->len == 64) i = 63;   /* the 64th and later reasons share one slot */
        else snprintf(c->name[c->len++], 48, "%s", name);
    }
    c->n[i] += n;
}

static uint64_t counts_total(const counts_t *c) {
    uint64_t t = 0;
    for (int i = 0; i < c->len; i++) t += c->n[i];
    return t;
}

static void counts_print(const counts_t *c, FILE *f) {
    fputc('{', f);
    for (int i = 0; i < c->len; i++) {
        fputc('"', f);
        for (const char *p = c->name[i]; *p; p++)
            if (*p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) fputc(*p, f);
        fprintf(f, "\":%llu%s", (unsigned long long)c->n[i], i + 1 < c->len ? "," : "");
    }
    fputc('}', f);
}

/* ---- channels: names, gaps, duplicates, and every distinct (seq, ts) ---- */

#define MAX_CHANNELS 65536

typedef struct { char *name; size_t len; uint64_t gaps, dups; } channel_t;
static channel_t channels[MAX_CHANNELS];
static uint32_t nchannels, chan_slots[2 * MAX_CHANNELS];   /* id + 1, 0: empty */

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* The id of a channel name (as it appears between the JSON quotes). */
static uint32_t channel_id(const uint8_t *name, size_t len) {
    uint32_t mask = 2 * MAX_CHANNELS - 1, i = hash_bytes(name, len) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t s = chan_slots[i];
        if (!s) break;
        channel_t *c = &channels[s - 1];
        if (c->len == len && !memcmp(c->name, name, len)) return s - 1;
    }
    if (nchannels == MAX_CHANNELS) return MAX_CHANNELS - 1;   /* beyond: shared, counted */
    channel_t *c = &channels[nchannels];
    c->name = malloc(len + 1);
    memcpy(c->name, name, len);
    c->name[len] = 0;
    c->len = len;
    chan_slots[i] = ++nchannels;
    return nchannels - 1;
}

static void channel_gap(uint32_t ch, uint64_t n) { channels[ch].gaps += n; }
static void channel_dup(uint32_t ch) { channels[ch].dups++; }

typedef struct { uint32_t ch; int64_t seq; double ts; } seen_t;
static seen_t *seen;
static uint64_t seen_len, seen_cap;   /* cap: a power of two; slots with ch == 0 are empty */

static uint64_t seen_slot(uint32_t ch, int64_t seq) {
    uint64_t h = ((uint64_t)ch * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)seq * 0xC2B2AE3D27D4EB4Full);
    return (h ^ (h >> 29)) & (seen_cap - 1);
}

/* Stored ch is id + 1, so a zeroed slot is empty. The first ts seen wins. */
static void seen_add(uint32_t ch, int64_t seq, double ts) {
    if (2 * (seen_len + 1) > seen_cap) {
        seen_t *old = seen;
        uint64_t old_cap = seen_cap;
        seen_cap = seen_cap ? seen_cap * 2 : 4096;
        seen = calloc(seen_cap, sizeof *seen);
        for (uint64_t i = 0; i < old_cap; i++)
            if (old[i].ch) {
                uint64_t j = seen_slot(old[i].ch - 1, old[i].seq);
                while (seen[j].ch) j = (j + 1) & (seen_cap - 1);
                seen[j] = old[i];
            }
        free(old);
    }
    uint64_t j = seen_slot(ch, seq);
    for (; seen[j].ch; j = (j + 1) & (seen_cap - 1))
        if (seen[j].ch == ch + 1 && seen[j].seq == seq) return;
    seen[j] = (seen_t){ch + 1, seq, ts};
    seen_len++;
}

/* "gaps":{channel:n},"duplicates":{channel:n},"seen":{channel:{seq:ts}} */
static void channels_print(FILE *f) {
    const char *names[2] = {"gaps", "duplicates"};
    for (int k = 0; k < 2; k++) {
        fprintf(f, "\"%s\":{", names[k]);
        int first = 1;
        for (uint32_t i = 0; i < nchannels; i++) {
            uint64_t n = k ? channels[i].dups : channels[i].gaps;
            if (!n) continue;
            fprintf(f, "%s\"%s\":%llu", first ? "" : ",", channels[i].name, (unsigned long long)n);
            first = 0;
        }
        fputs("},", f);
    }
    /* Grouped by channel: one pass over the table per channel that has events. */
    uint64_t *per = calloc(nchannels + 1, sizeof *per);
    for (uint64_t j = 0; j < seen_cap; j++)
        if (seen[j].ch) per[seen[j].ch - 1]++;
    fputs("\"seen\":{", f);
    int first = 1;
    for (uint32_t i = 0; i < nchannels; i++) {
        if (!per[i]) continue;
        fprintf(f, "%s\"%s\":{", first ? "" : ",", channels[i].name);
        first = 0;
        int one = 1;
        for (uint64_t j = 0; j < seen_cap; j++)
            if (seen[j].ch == i + 1) {
                fprintf(f, "%s\"%lld\":%.17g", one ? "" : ",", (long long)seen[j].seq, seen[j].ts);
                one = 0;
            }
        fputc('}', f);
    }
    fputc('}', f);
    free(per);
}
