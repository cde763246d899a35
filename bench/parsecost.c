/* The load client's own parse cost per message (bench/loadclient.c's on_data),
 * SSE against WebSocket, on fixed buffers of events shaped like odinws's
 * (an SSE message with its id line), fed in reads of a given size, CPU time
 * of this process only: no server, no sockets, so it holds on a busy machine.
 *
 *   gcc -O2 -w -o bench/.work/parsecost bench/parsecost.c -lm -lz
 *   bench/.work/parsecost sse 4096; bench/.work/parsecost ws 4096
 *
 * docs/performance.md, "Server-Sent Events against WebSocket (issue 20 row)". */
#define main loadclient_main
#include "loadclient.c"
#undef main
static uint8_t big[1 << 22];
static double cpu_now(void) { struct timespec ts; clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return ts.tv_sec + ts.tv_nsec / 1e9; }
int main(int argc, char **argv) {
    int ws = argc > 1 && argv[1][0] == 'w';  /* "ws" or "sse" */
    size_t chunk = argc > 2 ? (size_t)atoi(argv[2]) : 4096;
    conns = calloc(1, sizeof *conns);
    sse = !ws;
    size_t n = 0, msgs = 0;
    uint64_t now = wall_us();
    while (n + 600 < sizeof big) {
        char env[512];
        int el = snprintf(env, sizeof env,
            "{\"type\":\"event\",\"channel\":\"odin.token.%zu.trade\",\"pos\":\"odin.trades:0-ep1:%zu\",\"data\":{\"t_us\":%llu,"
            "\"seq\":%zu,\"token\":\"1000\",\"price\":0.00001234,\"amount\":1234.5678,"
            "\"side\":\"buy\",\"user\":\"bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh\"},\"ts\":%llu}",
            1000 + msgs % 16, msgs, (unsigned long long)now, msgs, (unsigned long long)(now / 1000));
        if (ws) { big[n++] = 0x81; big[n++] = 126; big[n++] = el >> 8; big[n++] = el & 255; memcpy(big + n, env, el); n += el; }
        else n += sprintf((char *)big + n, "id: odin.trades:0-ep1:%zu,1-ep1:%zu,2-ep1:99\ndata: %s\n\n", 1000000 + msgs, 2000000 + msgs, env);
        msgs++;
    }
    int reps = 200;
    double t0 = cpu_now();
    for (int r = 0; r < reps; r++)
        for (size_t off = 0; off < n; off += chunk) on_data(0, big + off, off + chunk <= n ? chunk : n - off);
    double dt = cpu_now() - t0;
    printf("%s chunk %zu: %llu frames counted of %zu, %.3f us per message (%zu bytes/msg)\n", ws ? "ws " : "sse", chunk,
           (unsigned long long)w_frames, msgs * reps, dt / (msgs * reps) * 1e6, n / msgs);
    return 0;
}
