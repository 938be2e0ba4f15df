/* h2.c: HTTP/2 for canopy-graph-emulator, with nghttp2.
 *
 * net.c gives each h2 connection a thread, which owns the nghttp2 session:
 * nghttp2 is not thread-safe, so only that thread reads, writes and submits.
 * A request complete (headers, body, END_STREAM) goes to a pool of worker
 * threads that run it through emu_serve(), the same core the HTTP/1.1 path
 * calls; the finished stream comes back on the connection's done list and a
 * byte on its wake pipe, and the connection thread submits the response.
 * So streams of one connection run concurrently, as requests on separate
 * HTTP/1.1 connections do (latency injection included), and no request
 * waits behind another.
 *
 * A stream is freed when nghttp2 closes it, unless a worker still holds it
 * (a client reset it while it ran): then when it comes back. The thread
 * ends when the client goes away, after every stream in flight is back. */
#include "emu.h"

#include "canopy/log.h"

#include <errno.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MOD "emulator"
#define H2_STREAMS 100         /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define H2_WINDOW (1u << 20)   /* per stream and connection: a large body in few round trips */
#define H2_OUT_MAX (64u << 10) /* serialized frames gathered before a write */
#define H2_IN_BUF (16u << 10)

typedef struct h2_conn h2_conn;

typedef struct h2_stream {
        h2_conn *hc;
        int32_t id;
        char *method, *path, *authority;
        emu_kv hdr[EMU_HDRS_MAX];
        int nh;
        size_t hdr_bytes;
        bool hdr_too_big;
        char *body;
        size_t len, cap;
        bool too_big;
        emu_reply reply;
        size_t sent;
        bool in_flight;                /* a worker has it */
        bool closed;                   /* nghttp2 closed it meanwhile */
        struct h2_stream *prev, *next; /* the connection's streams */
        struct h2_stream *qnext;       /* the pool's queue, then the done list */
} h2_stream;

struct h2_conn {
        emu_conn *c;
        nghttp2_session *ses;
        h2_stream *streams;
        int inflight;
        int wake[2];        /* pipe: a worker finished a stream */
        pthread_mutex_t mu; /* done list */
        h2_stream *done, *done_tail;
        char *out;
        size_t outlen, outcap;
};

struct emu_h2 {
        pthread_mutex_t mu;
        pthread_cond_t cv;
        h2_stream *head, *tail;
        bool stop;
        int n;
        pthread_t *th;
};

/* ---- streams ------------------------------------------------------------------------ */

static void stream_free(h2_stream *st) {
        h2_conn *hc = st->hc;
        if (st->prev)
                st->prev->next = st->next;
        else
                hc->streams = st->next;
        if (st->next)
                st->next->prev = st->prev;
        free(st->method);
        free(st->path);
        free(st->authority);
        for (int i = 0; i < st->nh; i++) {
                free(st->hdr[i].key);
                free(st->hdr[i].val);
        }
        free(st->body);
        emu_reply_free(&st->reply);
        free(st);
}

static const char *stream_header(void *ctx, const char *name) {
        h2_stream *st = ctx;
        for (int i = 0; i < st->nh; i++)
                if (!strcasecmp(st->hdr[i].key, name))
                        return st->hdr[i].val;
        /* HTTP/2 carries the host in :authority (RFC 9113 8.3.1) */
        if (!strcasecmp(name, "host"))
                return st->authority;
        return NULL;
}

/* ---- worker pool -------------------------------------------------------------------- */

static void run_stream(h2_stream *st) {
        h2_conn *hc = st->hc;
        if (st->hdr_too_big) {
                st->reply.status = 431;
                st->reply.body = strdup("Request header fields too large");
                st->reply.len = st->reply.body ? strlen(st->reply.body) : 0;
        } else {
                emu_request rq = {.method = st->method,
                                  .uri = st->path,
                                  .body = st->body,
                                  .len = st->len,
                                  .too_big = st->too_big,
                                  .loopback = hc->c->loopback,
                                  .protocol = "HTTP/2",
                                  .header = stream_header,
                                  .ctx = st};
                emu_serve(hc->c->srv, &rq, &st->reply);
        }
        pthread_mutex_lock(&hc->mu);
        st->qnext = NULL;
        if (hc->done_tail)
                hc->done_tail->qnext = st;
        else
                hc->done = st;
        hc->done_tail = st;
        /* Under mu: once the connection thread has taken the stream, this
         * thread no longer touches the pipe it is about to close. A full
         * pipe already holds a wake-up. */
        ssize_t w = write(hc->wake[1], "x", 1);
        (void)w;
        pthread_mutex_unlock(&hc->mu);
}

static void *worker_main(void *arg) {
        emu_h2 *p = arg;
        for (;;) {
                pthread_mutex_lock(&p->mu);
                while (!p->head && !p->stop)
                        pthread_cond_wait(&p->cv, &p->mu);
                h2_stream *st = p->head;
                if (st) {
                        p->head = st->qnext;
                        if (!p->head)
                                p->tail = NULL;
                }
                pthread_mutex_unlock(&p->mu);
                if (!st)
                        break;
                run_stream(st);
        }
        return NULL;
}

int emu_h2_init(emu_server *srv) {
        emu_h2 *p = calloc(1, sizeof(*p));
        if (!p)
                return -1;
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        p->th = calloc((size_t)srv->threads, sizeof(*p->th));
        if (!p->th) {
                free(p);
                return -1;
        }
        srv->h2 = p;
        for (int i = 0; i < srv->threads; i++) {
                if (pthread_create(&p->th[i], NULL, worker_main, p))
                        return -1;
                p->n++;
        }
        return 0;
}

/* Every connection is gone (emu_net_stop), so the queue is empty. */
void emu_h2_free(emu_server *srv) {
        emu_h2 *p = srv->h2;
        if (!p)
                return;
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->n; i++)
                pthread_join(p->th[i], NULL);
        free(p->th);
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
        srv->h2 = NULL;
}

static void dispatch(h2_conn *hc, h2_stream *st) {
        emu_h2 *p = hc->c->srv->h2;
        st->in_flight = true;
        hc->inflight++;
        pthread_mutex_lock(&p->mu);
        st->qnext = NULL;
        if (p->tail)
                p->tail->qnext = st;
        else
                p->head = st;
        p->tail = st;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
}

/* ---- nghttp2 callbacks (connection thread) ------------------------------------------ */

static int on_begin_headers(nghttp2_session *ses, const nghttp2_frame *frame, void *ud) {
        h2_conn *hc = ud;
        if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
                return 0;
        h2_stream *st = calloc(1, sizeof(*st));
        if (!st)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        st->hc = hc;
        st->id = frame->hd.stream_id;
        st->next = hc->streams;
        if (hc->streams)
                hc->streams->prev = st;
        hc->streams = st;
        nghttp2_session_set_stream_user_data(ses, st->id, st);
        return 0;
}

static char *dupn(const uint8_t *p, size_t n) {
        char *s = malloc(n + 1);
        if (s) {
                memcpy(s, p, n);
                s[n] = 0;
        }
        return s;
}

static int on_header(nghttp2_session *ses, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
        (void)flags;
        (void)ud;
        h2_stream *st = nghttp2_session_get_stream_user_data(ses, frame->hd.stream_id);
        if (!st || st->in_flight)
                return 0; /* trailers after the request went out: ignored */
        /* The same budget as MHD's connection buffer: past it, 431. */
        st->hdr_bytes += namelen + valuelen + 4;
        if (st->hdr_bytes > EMU_HDR_BYTES) {
                st->hdr_too_big = true;
                return 0;
        }
        char **slot = NULL;
        if (namelen == 7 && !memcmp(name, ":method", 7))
                slot = &st->method;
        else if (namelen == 5 && !memcmp(name, ":path", 5))
                slot = &st->path;
        else if (namelen == 10 && !memcmp(name, ":authority", 10))
                slot = &st->authority;
        else if (namelen && name[0] == ':')
                return 0; /* :scheme */
        if (slot) {
                free(*slot);
                *slot = dupn(value, valuelen);
                return *slot ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (st->nh >= EMU_HDRS_MAX) {
                st->hdr_too_big = true;
                return 0;
        }
        st->hdr[st->nh].key = dupn(name, namelen);
        st->hdr[st->nh].val = dupn(value, valuelen);
        if (!st->hdr[st->nh].key || !st->hdr[st->nh].val) {
                free(st->hdr[st->nh].key);
                free(st->hdr[st->nh].val);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        st->nh++;
        return 0;
}

static int on_data(nghttp2_session *ses, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                   void *ud) {
        (void)flags;
        (void)ud;
        h2_stream *st = nghttp2_session_get_stream_user_data(ses, stream_id);
        if (!st || st->in_flight)
                return 0;
        /* Past the cap the rest is read and dropped, and the answer is 413,
         * as on HTTP/1.1. */
        if (st->too_big || st->len + len > EMU_BODY_MAX) {
                st->too_big = true;
                return 0;
        }
        if (st->len + len + 1 > st->cap) {
                size_t nc = (st->len + len + 1) * 2;
                char *nb = realloc(st->body, nc);
                if (!nb)
                        return NGHTTP2_ERR_CALLBACK_FAILURE;
                st->body = nb;
                st->cap = nc;
        }
        memcpy(st->body + st->len, data, len);
        st->len += len;
        st->body[st->len] = 0;
        return 0;
}

static int on_frame_recv(nghttp2_session *ses, const nghttp2_frame *frame, void *ud) {
        h2_conn *hc = ud;
        if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
            !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                return 0;
        h2_stream *st = nghttp2_session_get_stream_user_data(ses, frame->hd.stream_id);
        if (!st || st->in_flight)
                return 0;
        if (!st->method || !st->path) {
                /* nghttp2 resets such streams itself; this is belt and braces */
                nghttp2_submit_rst_stream(ses, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
                return 0;
        }
        dispatch(hc, st);
        return 0;
}

static int on_stream_close(nghttp2_session *ses, int32_t stream_id, uint32_t error_code, void *ud) {
        (void)error_code;
        (void)ud;
        h2_stream *st = nghttp2_session_get_stream_user_data(ses, stream_id);
        if (!st)
                return 0;
        nghttp2_session_set_stream_user_data(ses, stream_id, NULL);
        if (st->in_flight)
                st->closed = true; /* freed when the worker gives it back */
        else
                stream_free(st);
        return 0;
}

static ssize_t read_body(nghttp2_session *ses, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *ud) {
        (void)ses;
        (void)stream_id;
        (void)ud;
        h2_stream *st = source->ptr;
        size_t n = st->reply.len - st->sent;
        if (n > length)
                n = length;
        memcpy(buf, st->reply.body + st->sent, n);
        st->sent += n;
        if (st->sent == st->reply.len)
                *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
}

/* ---- responses ---------------------------------------------------------------------- */

static void submit_reply(h2_conn *hc, h2_stream *st) {
        emu_reply *rp = &st->reply;
        nghttp2_nv nv[EMU_REPLY_HDRS + 2];
        char names[EMU_REPLY_HDRS][64];
        char status[8], clen[24];
        size_t n = 0;
        snprintf(status, sizeof(status), "%d", rp->status ? rp->status : 500);
        nv[n++] =
            (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE};
        for (int i = 0; i < rp->nh; i++) {
                /* HTTP/2 field names are lower case (RFC 9113 8.2.1); a peer
                 * must treat anything else as malformed. */
                size_t l = strlen(rp->hname[i]);
                if (l >= sizeof(names[i]))
                        continue;
                for (size_t j = 0; j <= l; j++)
                        names[i][j] = (char)(rp->hname[i][j] >= 'A' && rp->hname[i][j] <= 'Z'
                                                 ? rp->hname[i][j] - 'A' + 'a'
                                                 : rp->hname[i][j]);
                nv[n++] = (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)rp->hval[i], l, strlen(rp->hval[i]),
                                       NGHTTP2_NV_FLAG_NONE};
        }
        /* No body for HEAD, 204 and 304 (RFC 9110 6.4.1), as MHD does. */
        bool body = rp->len && strcmp(st->method, "HEAD") && rp->status != 204 && rp->status != 304;
        if (rp->status != 204 && rp->status != 304) {
                snprintf(clen, sizeof(clen), "%zu", rp->len);
                nv[n++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)clen, 14, strlen(clen),
                                       NGHTTP2_NV_FLAG_NONE};
        }
        nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_body};
        if (nghttp2_submit_response(hc->ses, st->id, nv, n, body ? &prd : NULL))
                nghttp2_submit_rst_stream(hc->ses, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* Take back what the workers finished; submit, or free when the stream
 * closed meanwhile (or the connection is going: submit false). */
static void take_done(h2_conn *hc, bool submit) {
        char drain[64];
        while (read(hc->wake[0], drain, sizeof(drain)) > 0)
                ;
        pthread_mutex_lock(&hc->mu);
        h2_stream *st = hc->done;
        hc->done = hc->done_tail = NULL;
        pthread_mutex_unlock(&hc->mu);
        while (st) {
                h2_stream *nx = st->qnext;
                st->in_flight = false;
                hc->inflight--;
                if (st->closed) {
                        stream_free(st);
                } else if (!submit) {
                        nghttp2_session_set_stream_user_data(hc->ses, st->id, NULL);
                        stream_free(st);
                } else
                        submit_reply(hc, st);
                st = nx;
        }
}

/* Serialize what nghttp2 has to send and write as much as the socket takes.
 * -1 when the connection failed. */
static int flush(h2_conn *hc) {
        for (;;) {
                while (hc->outlen < H2_OUT_MAX) {
                        const uint8_t *p;
                        ssize_t n = nghttp2_session_mem_send(hc->ses, &p);
                        if (n < 0)
                                return -1;
                        if (n == 0)
                                break;
                        if (hc->outlen + (size_t)n > hc->outcap) {
                                size_t nc = (hc->outlen + (size_t)n) * 2;
                                char *nb = realloc(hc->out, nc);
                                if (!nb)
                                        return -1;
                                hc->out = nb;
                                hc->outcap = nc;
                        }
                        memcpy(hc->out + hc->outlen, p, (size_t)n);
                        hc->outlen += (size_t)n;
                }
                if (!hc->outlen)
                        return 0;
                long w = emu_conn_write(hc->c, hc->out, hc->outlen);
                if (w < 0)
                        return -1;
                if (w == 0)
                        return 0; /* poll for POLLOUT */
                memmove(hc->out, hc->out + w, hc->outlen - (size_t)w);
                hc->outlen -= (size_t)w;
        }
}

/* ---- the connection ----------------------------------------------------------------- */

static nghttp2_session_callbacks *callbacks(void) {
        nghttp2_session_callbacks *cb;
        if (nghttp2_session_callbacks_new(&cb))
                return NULL;
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
        nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
        return cb;
}

void emu_h2_serve(emu_conn *c) {
        h2_conn hc = {.c = c, .wake = {-1, -1}};
        pthread_mutex_init(&hc.mu, NULL);
        nghttp2_session_callbacks *cb = callbacks();
        uint8_t *in = malloc(H2_IN_BUF);
        if (!cb || !in || pipe2(hc.wake, O_NONBLOCK | O_CLOEXEC) ||
            nghttp2_session_server_new(&hc.ses, cb, &hc)) {
                hc.ses = NULL;
                goto out;
        }
        nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_STREAMS},
                                       {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW}};
        if (nghttp2_submit_settings(hc.ses, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) ||
            nghttp2_session_set_local_window_size(hc.ses, NGHTTP2_FLAG_NONE, 0, (int32_t)H2_WINDOW))
                goto out;
        time_t last = time(NULL);
        bool going = false; /* GOAWAY sent after the idle timeout */
        for (;;) {
                take_done(&hc, true);
                if (flush(&hc))
                        break;
                if (!nghttp2_session_want_read(hc.ses) && !nghttp2_session_want_write(hc.ses) && !hc.outlen &&
                    !hc.inflight)
                        break;
                bool readable = emu_conn_pending(c);
                if (!readable) {
                        struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN},
                                              {.fd = hc.wake[0], .events = POLLIN}};
                        if (hc.outlen || c->want_write)
                                p[0].events |= POLLOUT;
                        int r = poll(p, 2, 1000);
                        if (r < 0 && errno != EINTR)
                                break;
                        if (p[0].revents & (POLLERR | POLLNVAL))
                                break;
                        readable = p[0].revents & (POLLIN | POLLHUP);
                }
                if (readable) {
                        long n;
                        bool eof = false;
                        /* a bounded batch, so that finished streams are
                         * answered while a client streams a large body */
                        for (int i = 0; i < 8; i++) {
                                n = emu_conn_read(c, in, H2_IN_BUF);
                                if (n < 0)
                                        eof = true;
                                if (n <= 0)
                                        break;
                                last = time(NULL);
                                if (nghttp2_session_mem_recv(hc.ses, in, (size_t)n) < 0) {
                                        eof = true; /* protocol error: GOAWAY queued, send it */
                                        flush(&hc);
                                        break;
                                }
                        }
                        if (eof)
                                break;
                }
                if (hc.inflight)
                        last = time(NULL);
                else if (!going && time(NULL) - last > EMU_IDLE_S) {
                        nghttp2_session_terminate_session(hc.ses, NGHTTP2_NO_ERROR);
                        going = true;
                }
        }
out:
        /* The workers still hold streams of this connection: wait for them. */
        while (hc.inflight > 0) {
                struct pollfd p = {.fd = hc.wake[0], .events = POLLIN};
                poll(&p, 1, 1000);
                take_done(&hc, false);
        }
        if (hc.ses)
                nghttp2_session_del(hc.ses);
        while (hc.streams)
                stream_free(hc.streams);
        nghttp2_session_callbacks_del(cb);
        free(in);
        free(hc.out);
        if (hc.wake[0] >= 0) {
                close(hc.wake[0]);
                close(hc.wake[1]);
        }
        pthread_mutex_destroy(&hc.mu);
}
