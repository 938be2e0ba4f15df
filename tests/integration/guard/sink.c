/* canopy-test-sink: a local SMTP sink and webhook receiver for tests.
 *
 *   canopy-test-sink --dir DIR [--smtp-port-file F] [--http-port-file F]
 *
 * Every e-mail received goes to DIR/mail.N, every HTTP request body to
 * DIR/hook.N. Listens on 127.0.0.1 free ports, one connection at a time.
 * Stops on SIGTERM. */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

static volatile sig_atomic_t stop_flag;
static void on_term(int s) {
        (void)s;
        stop_flag = 1;
}

static int listen_any(int *port) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_in a;
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 8))
                return -1;
        socklen_t l = sizeof(a);
        getsockname(fd, (struct sockaddr *)&a, &l);
        *port = ntohs(a.sin_port);
        return fd;
}

static void write_port(const char *path, int port) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        FILE *f = fopen(tmp, "w");
        if (!f)
                exit(1);
        fprintf(f, "%d\n", port);
        fclose(f);
        rename(tmp, path);
}

static void sendstr(int fd, const char *s) {
        ssize_t n = write(fd, s, strlen(s));
        (void)n;
}

/* Read one CRLF line into buf; returns length or -1. */
static int readline(int fd, char *buf, int cap) {
        int n = 0;
        while (n < cap - 1) {
                char c;
                ssize_t r = read(fd, &c, 1);
                if (r <= 0)
                        return -1;
                buf[n++] = c;
                if (c == '\n')
                        break;
        }
        buf[n] = 0;
        return n;
}

static void smtp_session(int fd, const char *dir, int *count) {
        char line[4096];
        sendstr(fd, "220 canopy-test-sink ESMTP\r\n");
        FILE *out = NULL;
        while (readline(fd, line, sizeof(line)) > 0) {
                if (!strncasecmp(line, "EHLO", 4) || !strncasecmp(line, "HELO", 4)) {
                        sendstr(fd, "250 canopy-test-sink\r\n");
                } else if (!strncasecmp(line, "MAIL", 4) || !strncasecmp(line, "RCPT", 4) ||
                           !strncasecmp(line, "RSET", 4) || !strncasecmp(line, "NOOP", 4)) {
                        sendstr(fd, "250 OK\r\n");
                } else if (!strncasecmp(line, "DATA", 4)) {
                        char path[4096];
                        snprintf(path, sizeof(path), "%s/mail.%d", dir, ++*count);
                        out = fopen(path, "w");
                        sendstr(fd, "354 go ahead\r\n");
                        while (readline(fd, line, sizeof(line)) > 0) {
                                if (!strcmp(line, ".\r\n"))
                                        break;
                                if (out)
                                        fputs(line[0] == '.' ? line + 1 : line, out);
                        }
                        if (out)
                                fclose(out);
                        out = NULL;
                        sendstr(fd, "250 queued\r\n");
                } else if (!strncasecmp(line, "QUIT", 4)) {
                        sendstr(fd, "221 bye\r\n");
                        break;
                } else {
                        sendstr(fd, "502 not implemented\r\n");
                }
        }
}

static void http_session(int fd, const char *dir, int *count) {
        char line[4096];
        long clen = 0;
        while (readline(fd, line, sizeof(line)) > 0) {
                if (!strncasecmp(line, "Content-Length:", 15))
                        clen = strtol(line + 15, NULL, 10);
                if (!strcmp(line, "\r\n"))
                        break;
        }
        if (clen < 0 || clen > 10 * 1024 * 1024)
                clen = 0;
        char *body = malloc((size_t)clen + 1);
        long got = 0;
        while (body && got < clen) {
                ssize_t r = read(fd, body + got, (size_t)(clen - got));
                if (r <= 0)
                        break;
                got += r;
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/hook.%d", dir, ++*count);
        FILE *f = fopen(path, "w");
        if (f && body) {
                fwrite(body, 1, (size_t)got, f);
        }
        if (f)
                fclose(f);
        free(body);
        sendstr(fd, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

int main(int argc, char **argv) {
        const char *dir = NULL, *smtp_pf = NULL, *http_pf = NULL;
        static const struct option opts[] = {
            {"dir", 1, 0, 'd'}, {"smtp-port-file", 1, 0, 's'}, {"http-port-file", 1, 0, 'w'}, {0, 0, 0, 0}};
        int c;
        while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
                if (c == 'd')
                        dir = optarg;
                else if (c == 's')
                        smtp_pf = optarg;
                else if (c == 'w')
                        http_pf = optarg;
                else
                        return 2;
        }
        if (!dir) {
                fprintf(stderr, "usage: canopy-test-sink --dir DIR [--smtp-port-file F] [--http-port-file F]\n");
                return 2;
        }
        signal(SIGTERM, on_term);
        signal(SIGPIPE, SIG_IGN);
        int sp = 0, hp = 0;
        int sfd = listen_any(&sp), hfd = listen_any(&hp);
        if (sfd < 0 || hfd < 0)
                return 1;
        if (smtp_pf)
                write_port(smtp_pf, sp);
        if (http_pf)
                write_port(http_pf, hp);
        int nmail = 0, nhook = 0;
        while (!stop_flag) {
                struct pollfd p[2] = {{sfd, POLLIN, 0}, {hfd, POLLIN, 0}};
                if (poll(p, 2, 200) <= 0)
                        continue;
                for (int i = 0; i < 2; i++) {
                        if (!(p[i].revents & POLLIN))
                                continue;
                        int cfd = accept(p[i].fd, NULL, NULL);
                        if (cfd < 0)
                                continue;
                        struct timeval tv = {10, 0};
                        setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
                        if (i == 0)
                                smtp_session(cfd, dir, &nmail);
                        else
                                http_session(cfd, dir, &nhook);
                        close(cfd);
                }
        }
        return 0;
}
