/* net.c: the listening socket and the connections of canopy-graph-emulator.
 *
 * One port serves both HTTP versions, as Graph does. The emulator accepts
 * every TCP connection itself and gives each a thread:
 *
 *  - TLS (the default): OpenSSL runs the handshake and ALPN picks "h2" or
 *    "http/1.1" (server preference, h2 first; --no-http2 offers http/1.1
 *    only). h2 goes to h2.c (nghttp2). Anything else (http/1.1, or a client
 *    without ALPN) goes to libmicrohttpd through a socketpair: this thread
 *    relays the decrypted bytes both ways, so MHD keeps its own HTTP/1.1
 *    parser, keep-alive, limits and timeouts exactly as when it owned the
 *    TLS socket, and every request still reaches emu_serve().
 *  - Plain HTTP (--insecure-http): a connection that opens with the HTTP/2
 *    preface (h2c with prior knowledge) goes to h2.c; any other is handed to
 *    MHD as it is, with no relay.
 *
 * Open connections are capped (EMU_CONNS_MAX); emu_net_stop shuts every one
 * down and waits for its thread. */
#include "emu.h"

#include "canopy/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MOD "emulator"
#define HANDSHAKE_S 10        /* TLS handshake or h2c preface, then the connection is dropped */
#define RELAY_BUF (32u << 10) /* per direction */

struct emu_net {
        int lfd;
        int stop[2]; /* pipe: wakes the acceptor */
        pthread_t acceptor;
        SSL_CTX *ctx; /* NULL on plain HTTP */

        pthread_mutex_t mu; /* the list */
        pthread_cond_t cv;  /* signalled when a connection ends */
        emu_conn *conns;
        int nconns;
        bool stopping;
};

bool emu_addr_loopback(const struct sockaddr *sa) {
        if (sa->sa_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
        if (sa->sa_family == AF_INET6) {
                const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
                return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        }
        return false;
}

/* ---- I/O ---------------------------------------------------------------------------- */

static long ssl_result(emu_conn *c, int n) {
        if (n > 0)
                return n;
        switch (SSL_get_error(c->ssl, n)) {
        case SSL_ERROR_WANT_READ:
                return 0;
        case SSL_ERROR_WANT_WRITE:
                c->want_write = true;
                return 0;
        default:
                ERR_clear_error();
                return -1;
        }
}

long emu_conn_read(emu_conn *c, void *buf, size_t n) {
        if (c->ssl) {
                c->want_write = false;
                return ssl_result(c, SSL_read(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n));
        }
        ssize_t r = recv(c->fd, buf, n, 0);
        if (r > 0)
                return (long)r;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                return 0;
        return -1;
}

/* With SSL_MODE_ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER a retry
 * after WANT_WRITE may pass the same bytes from a moved buffer, and more of
 * them: callers only ever append to what they offered. */
long emu_conn_write(emu_conn *c, const void *buf, size_t n) {
        if (c->ssl)
                return ssl_result(c, SSL_write(c->ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n));
        ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
        if (r >= 0)
                return (long)r;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
        return -1;
}

bool emu_conn_pending(const emu_conn *c) {
        return c->ssl && SSL_pending(c->ssl) > 0;
}

static void set_nonblocking(int fd, bool on) {
        int fl = fcntl(fd, F_GETFL, 0);
        if (fl >= 0)
                fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static void set_timeouts(int fd, int seconds) {
        struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* ---- HTTP/1.1 over TLS: relay to libmicrohttpd --------------------------------------- */

typedef struct rbuf {
        char b[RELAY_BUF];
        size_t len;
} rbuf;

static void rbuf_drop(rbuf *r, size_t n) {
        memmove(r->b, r->b + n, r->len - n);
        r->len -= n;
}

/* Relay between the TLS client and MHD's end of a socketpair until MHD closes
 * (it decides keep-alive and timeouts) or the client goes away. */
static void relay(emu_conn *c) {
        emu_server *srv = c->srv;
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp))
                return;
        /* MHD takes sp[1] (and closes it even when it refuses it); the peer's
         * address goes with it, for the loopback check of admin routes. */
        if (MHD_add_connection(srv->mhd, sp[1], (const struct sockaddr *)&c->peer, c->peerlen) != MHD_YES) {
                close(sp[0]);
                return;
        }
        int m = sp[0];
        set_nonblocking(m, true);
        rbuf *up = malloc(sizeof(*up)), *down = malloc(sizeof(*down)); /* client -> MHD, MHD -> client */
        if (!up || !down)
                goto out;
        up->len = down->len = 0;
        bool client_eof = false, mhd_eof = false, up_shut = false;
        for (;;) {
                bool moved = false;
                /* client -> MHD */
                while (!client_eof && up->len < RELAY_BUF) {
                        long n = emu_conn_read(c, up->b + up->len, RELAY_BUF - up->len);
                        if (n < 0)
                                client_eof = true;
                        if (n <= 0)
                                break;
                        up->len += (size_t)n;
                        moved = true;
                }
                while (up->len) {
                        ssize_t n = send(m, up->b, up->len, MSG_NOSIGNAL);
                        if (n <= 0) {
                                if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                                        goto out;
                                break;
                        }
                        rbuf_drop(up, (size_t)n);
                        moved = true;
                }
                if (client_eof && !up->len && !up_shut) {
                        shutdown(m, SHUT_WR);
                        up_shut = true;
                }
                /* MHD -> client */
                while (!mhd_eof && down->len < RELAY_BUF) {
                        ssize_t n = recv(m, down->b + down->len, RELAY_BUF - down->len, 0);
                        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                                mhd_eof = true;
                        if (n <= 0)
                                break;
                        down->len += (size_t)n;
                        moved = true;
                }
                while (down->len) {
                        long n = emu_conn_write(c, down->b, down->len);
                        if (n < 0)
                                goto out;
                        if (n == 0)
                                break;
                        rbuf_drop(down, (size_t)n);
                        moved = true;
                }
                if (mhd_eof && !down->len)
                        break;
                if (client_eof && up_shut && mhd_eof)
                        break;
                /* Decrypted bytes OpenSSL holds are invisible to poll(). */
                if (moved || (emu_conn_pending(c) && !client_eof && up->len < RELAY_BUF))
                        continue;
                struct pollfd p[2] = {{.fd = c->fd, .events = 0}, {.fd = m, .events = 0}};
                if (!client_eof && up->len < RELAY_BUF)
                        p[0].events |= POLLIN;
                if (down->len || c->want_write)
                        p[0].events |= POLLOUT;
                if (!mhd_eof && down->len < RELAY_BUF)
                        p[1].events |= POLLIN;
                if (up->len)
                        p[1].events |= POLLOUT;
                /* MHD times idle connections out and closes its end: no
                 * timeout of our own is needed here. */
                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        goto out;
                if ((p[0].revents & (POLLERR | POLLNVAL)) || (p[1].revents & POLLNVAL))
                        goto out;
                if ((p[0].revents & POLLHUP) && !(p[0].revents & POLLIN))
                        client_eof = true;
        }
        if (c->ssl)
                SSL_shutdown(c->ssl);
out:
        free(up);
        free(down);
        close(m);
}

/* ---- connections ------------------------------------------------------------------- */

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* Plain HTTP: does the client open with the HTTP/2 preface? Peeks only, so a
 * connection handed to MHD loses nothing. */
static bool peek_preface(int fd) {
        char buf[sizeof(preface) - 1];
        time_t end = time(NULL) + HANDSHAKE_S;
        for (;;) {
                ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK);
                if (n <= 0)
                        return false;
                if (memcmp(buf, preface, (size_t)n))
                        return false;
                if ((size_t)n == sizeof(buf))
                        return true;
                if (time(NULL) > end)
                        return false;
                usleep(2000); /* a preface split across segments: rare */
        }
}

static void conn_unlink(emu_net *net, emu_conn *c) {
        pthread_mutex_lock(&net->mu);
        if (c->prev)
                c->prev->next = c->next;
        else
                net->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        net->nconns--;
        pthread_cond_broadcast(&net->cv);
        pthread_mutex_unlock(&net->mu);
}

static void *conn_main(void *arg) {
        emu_conn *c = arg;
        emu_server *srv = c->srv;
        emu_net *net = srv->net;
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        set_timeouts(c->fd, HANDSHAKE_S);
        bool h2 = false;
        if (net->ctx) {
                c->ssl = SSL_new(net->ctx);
                if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
                        goto out;
                if (SSL_accept(c->ssl) != 1) {
                        /* A client that does not trust the certificate, a
                         * port scanner: nothing to serve, no need to shout. */
                        unsigned long e = ERR_get_error();
                        char eb[256];
                        ERR_error_string_n(e, eb, sizeof(eb));
                        canopy_log(CANOPY_LOG_DEBUG, MOD, NULL, "TLS handshake failed: %s", eb);
                        ERR_clear_error();
                        SSL_free(c->ssl);
                        c->ssl = NULL;
                        goto out;
                }
                const unsigned char *alpn = NULL;
                unsigned alen = 0;
                SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
                h2 = alen == 2 && !memcmp(alpn, "h2", 2);
        } else if (!srv->no_h2) {
                h2 = peek_preface(c->fd);
        }
        set_timeouts(c->fd, 0);
        if (h2) {
                emu_stats_conn(srv, "HTTP/2");
                set_nonblocking(c->fd, true);
                emu_h2_serve(c);
        } else if (c->ssl) {
                emu_stats_conn(srv, "HTTP/1.1");
                set_nonblocking(c->fd, true);
                relay(c);
        } else {
                /* MHD owns the socket from here on; emu_net_stop must not
                 * touch it any more. */
                emu_stats_conn(srv, "HTTP/1.1");
                pthread_mutex_lock(&net->mu);
                int fd = c->fd;
                c->fd = -1;
                pthread_mutex_unlock(&net->mu);
                MHD_add_connection(srv->mhd, fd, (const struct sockaddr *)&c->peer, c->peerlen);
        }
out:
        if (c->ssl)
                SSL_free(c->ssl);
        conn_unlink(net, c);
        if (c->fd >= 0)
                close(c->fd);
        free(c);
        return NULL;
}

static void *acceptor_main(void *arg) {
        emu_server *srv = arg;
        emu_net *net = srv->net;
        for (;;) {
                struct pollfd p[2] = {{.fd = net->lfd, .events = POLLIN},
                                      {.fd = net->stop[0], .events = POLLIN}};
                if (poll(p, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                if (p[1].revents)
                        break;
                if (!(p[0].revents & POLLIN))
                        continue;
                emu_conn *c = calloc(1, sizeof(*c));
                if (!c) {
                        usleep(10000);
                        continue;
                }
                c->srv = srv;
                c->peerlen = sizeof(c->peer);
                c->fd = accept4(net->lfd, (struct sockaddr *)&c->peer, &c->peerlen, SOCK_CLOEXEC);
                if (c->fd < 0) {
                        free(c);
                        /* out of descriptors: back off instead of spinning */
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                                usleep(50000);
                        continue;
                }
                c->loopback = emu_addr_loopback((const struct sockaddr *)&c->peer);
                pthread_mutex_lock(&net->mu);
                bool full = net->nconns >= EMU_CONNS_MAX || net->stopping;
                if (!full) {
                        c->next = net->conns;
                        if (net->conns)
                                net->conns->prev = c;
                        net->conns = c;
                        net->nconns++;
                }
                pthread_mutex_unlock(&net->mu);
                if (full) {
                        close(c->fd);
                        free(c);
                        continue;
                }
                pthread_t th;
                pthread_attr_t at;
                pthread_attr_init(&at);
                pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
                if (pthread_create(&th, &at, conn_main, c)) {
                        conn_unlink(net, c);
                        close(c->fd);
                        free(c);
                }
                pthread_attr_destroy(&at);
        }
        return NULL;
}

/* ---- TLS ---------------------------------------------------------------------------- */

static const unsigned char alpn_both[] = "\x02h2\x08http/1.1";
static const unsigned char alpn_h1[] = "\x08http/1.1";

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
        emu_server *srv = arg;
        (void)ssl;
        const unsigned char *offer = srv->no_h2 ? alpn_h1 : alpn_both;
        unsigned olen = srv->no_h2 ? sizeof(alpn_h1) - 1 : sizeof(alpn_both) - 1;
        unsigned char *sel = NULL;
        if (SSL_select_next_proto(&sel, outlen, offer, olen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
                return SSL_TLSEXT_ERR_NOACK; /* no common protocol: HTTP/1.1 without ALPN */
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *tls_context(emu_server *srv) {
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        if (!ctx)
                return NULL;
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                     SSL_OP_CIPHER_SERVER_PREFERENCE);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (SSL_CTX_use_certificate_chain_file(ctx, srv->tls_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, srv->tls_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
                unsigned long e = ERR_get_error();
                char eb[256];
                ERR_error_string_n(e, eb, sizeof(eb));
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot load TLS certificate %s or key %s: %s",
                           srv->tls_cert, srv->tls_key, eb);
                ERR_clear_error();
                SSL_CTX_free(ctx);
                return NULL;
        }
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, srv);
        return ctx;
}

/* ---- start, stop -------------------------------------------------------------------- */

int emu_net_start(emu_server *srv, int *ret_port) {
        emu_net *net = calloc(1, sizeof(*net));
        if (!net)
                return -1;
        net->lfd = -1;
        net->stop[0] = net->stop[1] = -1;
        pthread_mutex_init(&net->mu, NULL);
        pthread_cond_init(&net->cv, NULL);
        srv->net = net;
        if (!srv->insecure && !(net->ctx = tls_context(srv)))
                return -1;
        struct sockaddr_in sa = {0};
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)srv->listen_port);
        if (inet_pton(AF_INET, srv->listen_addr, &sa.sin_addr) != 1) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "invalid listen address %s", srv->listen_addr);
                return -1;
        }
        int one = 1;
        net->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (net->lfd < 0 || setsockopt(net->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
            bind(net->lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(net->lfd, 128)) {
                canopy_log(CANOPY_LOG_ERROR, MOD, NULL, "cannot listen on %s:%d: %s", srv->listen_addr,
                           srv->listen_port, strerror(errno));
                return -1;
        }
        socklen_t sl = sizeof(sa);
        getsockname(net->lfd, (struct sockaddr *)&sa, &sl);
        *ret_port = ntohs(sa.sin_port);
        if (pipe2(net->stop, O_CLOEXEC))
                return -1;
        if (pthread_create(&net->acceptor, NULL, acceptor_main, srv)) {
                close(net->stop[0]);
                close(net->stop[1]);
                net->stop[0] = net->stop[1] = -1;
                return -1;
        }
        return 0;
}

void emu_net_stop(emu_server *srv) {
        emu_net *net = srv->net;
        if (!net)
                return;
        if (net->stop[1] >= 0) {
                ssize_t w = write(net->stop[1], "x", 1);
                (void)w;
                pthread_join(net->acceptor, NULL);
        }
        /* Shut every socket down: each thread sees its peer gone, finishes
         * the requests it has in flight and ends. */
        pthread_mutex_lock(&net->mu);
        net->stopping = true;
        for (emu_conn *c = net->conns; c; c = c->next)
                if (c->fd >= 0)
                        shutdown(c->fd, SHUT_RDWR);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 30;
        while (net->nconns > 0)
                if (pthread_cond_timedwait(&net->cv, &net->mu, &until))
                        break;
        int left = net->nconns;
        pthread_mutex_unlock(&net->mu);
        if (left) {
                /* Threads stuck past the deadline still use net: leave it. */
                canopy_log(CANOPY_LOG_WARN, MOD, NULL, "%d connections did not close", left);
                return;
        }
        if (net->lfd >= 0)
                close(net->lfd);
        if (net->stop[0] >= 0) {
                close(net->stop[0]);
                close(net->stop[1]);
        }
        SSL_CTX_free(net->ctx);
        pthread_mutex_destroy(&net->mu);
        pthread_cond_destroy(&net->cv);
        free(net);
        srv->net = NULL;
}
