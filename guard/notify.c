/* notify.c: e-mail through libcurl's SMTP and a JSON webhook. */
#include "notify.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NOTIFY_TIMEOUT_S 20L

struct upload {
        const char *data;
        size_t len, off;
};

static size_t read_cb(char *buf, size_t size, size_t nitems, void *opaque) {
        struct upload *u = opaque;
        size_t room = size * nitems, left = u->len - u->off;
        size_t n = left < room ? left : room;
        memcpy(buf, u->data + u->off, n);
        u->off += n;
        return n;
}

static size_t discard_cb(char *p, size_t s, size_t n, void *o) {
        (void)p;
        (void)o;
        return s * n;
}

canopy_err notify_email(const canopy_guard_conf *cf, const char *subject, const char *text, char *errbuf,
                        size_t errlen) {
        canopy_err err = CANOPY_OK;
        CURL *c = curl_easy_init();
        struct curl_slist *rcpt = NULL;
        char *msg = NULL;
        if (!c)
                return CANOPY_ERR_NOMEM;
        char date[64];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        size_t cap = strlen(text) + strlen(subject) + 1024;
        for (char **t = cf->smtp_to; t && *t; t++)
                cap += strlen(*t) + 2;
        msg = malloc(cap);
        if (!msg) {
                err = CANOPY_ERR_NOMEM;
                goto out;
        }
        size_t len = (size_t)snprintf(msg, cap, "Date: %s\r\nFrom: <%s>\r\nTo: ", date, cf->smtp_from);
        for (char **t = cf->smtp_to; t && *t; t++) {
                len += (size_t)snprintf(msg + len, cap - len, "%s<%s>", t == cf->smtp_to ? "" : ", ", *t);
                rcpt = curl_slist_append(rcpt, *t);
        }
        len += (size_t)snprintf(msg + len, cap - len,
                                "\r\nSubject: %s\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
                                subject);
        /* Body lines: CRLF endings; a leading '.' is doubled by curl itself. */
        for (const char *p = text; *p && len + 3 < cap; p++) {
                if (*p == '\n')
                        msg[len++] = '\r';
                msg[len++] = *p;
        }
        len += (size_t)snprintf(msg + len, cap - len, "\r\n");
        struct upload u = {msg, len, 0};
        curl_easy_setopt(c, CURLOPT_URL, cf->smtp_url);
        curl_easy_setopt(c, CURLOPT_MAIL_FROM, cf->smtp_from);
        curl_easy_setopt(c, CURLOPT_MAIL_RCPT, rcpt);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
        curl_easy_setopt(c, CURLOPT_READDATA, &u);
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, NOTIFY_TIMEOUT_S);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        if (cf->smtp_username)
                curl_easy_setopt(c, CURLOPT_USERNAME, cf->smtp_username);
        if (cf->smtp_password)
                curl_easy_setopt(c, CURLOPT_PASSWORD, cf->smtp_password);
        if (cf->smtp_ca_file)
                curl_easy_setopt(c, CURLOPT_CAINFO, cf->smtp_ca_file);
        /* Upgrade to TLS when the server offers it; smtps:// is TLS from the start. */
        curl_easy_setopt(c, CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
        CURLcode rc = curl_easy_perform(c);
        if (rc != CURLE_OK) {
                snprintf(errbuf, errlen, "e-mail to %s failed: %s", cf->smtp_url, curl_easy_strerror(rc));
                err = CANOPY_ERR_IO;
        }
out:
        curl_slist_free_all(rcpt);
        free(msg);
        curl_easy_cleanup(c);
        return err;
}

canopy_err notify_webhook(const canopy_guard_conf *cf, const char *json, char *errbuf, size_t errlen) {
        canopy_err err = CANOPY_OK;
        CURL *c = curl_easy_init();
        if (!c)
                return CANOPY_ERR_NOMEM;
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_URL, cf->webhook_url);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, json);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, NOTIFY_TIMEOUT_S);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard_cb);
        if (cf->webhook_ca_file)
                curl_easy_setopt(c, CURLOPT_CAINFO, cf->webhook_ca_file);
        CURLcode rc = curl_easy_perform(c);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK) {
                snprintf(errbuf, errlen, "webhook %s failed: %s", cf->webhook_url, curl_easy_strerror(rc));
                err = CANOPY_ERR_IO;
        } else if (status < 200 || status >= 300) {
                snprintf(errbuf, errlen, "webhook %s answered HTTP %ld", cf->webhook_url, status);
                err = CANOPY_ERR_IO;
        }
        curl_slist_free_all(h);
        curl_easy_cleanup(c);
        return err;
}
