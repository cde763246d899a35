/*
 * The head of one WebSocket frame as a server sends it (RFC 6455 5.2), for
 * the two C load clients: odinws_tools/loadtest/loadclient.c (capacity)
 * and bench/loadclient.c (benchmark). Header only, static inline: each
 * client is one compilation unit.
 */
#ifndef ODINWS_WSFRAME_H
#define ODINWS_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t opcode;   /* 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong */
    uint8_t fin;      /* non-zero on the last fragment of a message */
    uint8_t rsv1;     /* non-zero on a compressed message (RFC 7692) */
    size_t head;      /* bytes before the payload */
    uint64_t length;  /* payload bytes */
} ws_frame_t;

enum { WS_FRAME_PARTIAL = 0, WS_FRAME_WHOLE = 1, WS_FRAME_MASKED = -1 };

/*
 * Read the frame at buf (avail bytes there). WS_FRAME_WHOLE when head and
 * payload are all in buf; WS_FRAME_PARTIAL when more bytes are needed;
 * WS_FRAME_MASKED for a masked frame, which a server must never send
 * (RFC 6455 5.1: the client closes the connection).
 */
static inline int ws_frame(const uint8_t *buf, size_t avail, ws_frame_t *f) {
    if (avail < 2) return WS_FRAME_PARTIAL;
    if (buf[1] & 0x80) return WS_FRAME_MASKED;
    f->opcode = buf[0] & 0x0f;
    f->fin = buf[0] & 0x80;
    f->rsv1 = buf[0] & 0x40;
    f->length = buf[1] & 0x7f;
    f->head = 2;
    if (f->length == 126) {
        if (avail < 4) return WS_FRAME_PARTIAL;
        f->length = ((uint64_t)buf[2] << 8) | buf[3];
        f->head = 4;
    } else if (f->length == 127) {
        if (avail < 10) return WS_FRAME_PARTIAL;
        f->length = 0;
        for (int k = 0; k < 8; k++) f->length = (f->length << 8) | buf[2 + k];
        f->head = 10;
    }
    if (avail - f->head < f->length) return WS_FRAME_PARTIAL;
    return WS_FRAME_WHOLE;
}

#endif
