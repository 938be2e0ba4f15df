/* ldapconn.c: connection, TLS, bind, failover across URIs, rootDSE, scope
 * and the start-up security checks of the connector account. */
#include <ctype.h>
#include <netdb.h>
#include <poll.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/log.h"
#include "ldap_util.h"
#include "producer.h"

static const canopy_log_ctx *ctx_of(prod *p) {
        static __thread canopy_log_ctx c;
        c = (canopy_log_ctx)CANOPY_LOG_CTX_NONE;
        c.connector = p->cf->connector;
        return &c;
}

canopy_err prod_ldap_err(prod *p, int rc, const char *what) {
        char *diag = NULL;
        if (p->ld)
                ldap_get_option(p->ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
        canopy_err err = CANOPY_ERR_LDAP;
        if (rc == LDAP_INSUFFICIENT_ACCESS)
                err = CANOPY_ERR_LDAP_RIGHTS;
        else if (rc == LDAP_INVALID_CREDENTIALS)
                err = CANOPY_ERR_LDAP_BIND;
        canopy_log(err == CANOPY_ERR_LDAP ? CANOPY_LOG_WARN : CANOPY_LOG_ERROR, MOD, ctx_of(p),
                   "%s: %s (%d)%s%s", what, ldap_err2string(rc), rc, diag && *diag ? ": " : "",
                   diag ? diag : "");
        ldap_memfree(diag);
        return err;
}

/* Normalise a DN to lower-case LDAPv3 form for suffix comparisons. */
static char *norm_dn(const char *dn) {
        char *out = NULL;
        if (ldap_dn_normalize(dn, LDAP_DN_FORMAT_LDAPV3, &out, LDAP_DN_FORMAT_LDAPV3) != LDAP_SUCCESS || !out)
                out = NULL;
        char *r = strdup(out ? out : dn);
        ldap_memfree(out);
        if (r)
                for (char *s = r; *s; s++)
                        *s = (char)tolower((unsigned char)*s);
        return r;
}

bool prod_in_scope(prod *p, const char *dn) {
        if (!dn)
                return false;
        char *n = norm_dn(dn);
        if (!n)
                return false;
        bool in = false;
        for (size_t i = 0; p->norm_bases && p->norm_bases[i] && !in; i++)
                in = canopy_ldap_dn_under(n, p->norm_bases[i]);
        /* As Entra Connect leaves its own service account out: the
         * connector account is not a user to sync. */
        if (in && p->norm_self && !strcmp(n, p->norm_self))
                in = false;
        free(n);
        return in;
}

char *prod_read_attr(prod *p, const char *dn, const char *attr, size_t *ret_len) {
        char *attrs[] = {(char *)attr, NULL};
        LDAPMessage *res = NULL;
        struct timeval tv = {(time_t)(p->cf->timeout_ms / 1000), 0};
        int rc = ldap_search_ext_s(p->ld, dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, &tv, 1, &res);
        char *out = NULL;
        if (rc == LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                struct berval **v = e ? ldap_get_values_len(p->ld, e, attr) : NULL;
                if (v && v[0] && (out = malloc(v[0]->bv_len + 1))) {
                        memcpy(out, v[0]->bv_val, v[0]->bv_len);
                        out[v[0]->bv_len] = 0;
                        if (ret_len)
                                *ret_len = v[0]->bv_len;
                }
                ldap_value_free_len(v);
        }
        ldap_msgfree(res);
        return out;
}

char *prod_root_attr(prod *p, const char *attr) {
        return prod_read_attr(p, "", attr, NULL);
}

static bool root_has(prod *p, const char *attr, const char *value) {
        char *attrs[] = {(char *)attr, NULL};
        LDAPMessage *res = NULL;
        bool found = false;
        if (ldap_search_ext_s(p->ld, "", LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, NULL, 1, &res) ==
            LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                struct berval **v = e ? ldap_get_values_len(p->ld, e, attr) : NULL;
                for (size_t i = 0; v && v[i] && !found; i++)
                        found = v[i]->bv_len == strlen(value) && !memcmp(v[i]->bv_val, value, v[i]->bv_len);
                ldap_value_free_len(v);
        }
        ldap_msgfree(res);
        return found;
}

/* Find the naming context holding the first base DN. */
static char *find_nc(prod *p) {
        if (p->is_ad) {
                char *d = prod_root_attr(p, "defaultNamingContext");
                if (d)
                        return d;
        }
        char *attrs[] = {"namingContexts", NULL};
        LDAPMessage *res = NULL;
        char *best = NULL;
        char *nb = norm_dn(p->cf->base_dns[0]);
        if (nb && ldap_search_ext_s(p->ld, "", LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, NULL, 1,
                                    &res) == LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                struct berval **v = e ? ldap_get_values_len(p->ld, e, "namingContexts") : NULL;
                for (size_t i = 0; v && v[i]; i++) {
                        char *c = strndup(v[i]->bv_val, v[i]->bv_len);
                        char *nc = c ? norm_dn(c) : NULL;
                        size_t bl = nb ? strlen(nb) : 0, cl = nc ? strlen(nc) : 0;
                        if (nc && cl <= bl && !strcmp(nb + bl - cl, nc) && (!best || cl > strlen(best))) {
                                free(best);
                                best = strdup(c);
                        }
                        free(c);
                        free(nc);
                }
                ldap_value_free_len(v);
        }
        ldap_msgfree(res);
        free(nb);
        return best ? best : strdup(p->cf->base_dns[0]);
}

/* ---- privileged account check (AD) ---- */

/* The DN of the bound account: bind_dn if it is a DN, else looked up by UPN
 * or sAMAccountName. */
static char *account_dn(prod *p) {
        const char *b = p->cf->bind_dn;
        if (!b || !*b)
                return NULL;
        LDAPDN dn = NULL;
        if (strchr(b, '=') && ldap_str2dn(b, &dn, LDAP_DN_FORMAT_LDAPV3) == LDAP_SUCCESS) {
                ldap_dnfree(dn);
                return strdup(b);
        }
        char filter[512], esc[400];
        size_t o = 0;
        const char *name = b;
        const char *bs = strchr(b, '\\');
        bool upn = strchr(b, '@') != NULL;
        if (bs)
                name = bs + 1;
        for (const char *s = name; *s && o + 4 < sizeof(esc); s++) {
                if (strchr("*()\\", *s))
                        o += (size_t)snprintf(esc + o, sizeof(esc) - o, "\\%02x", (unsigned char)*s);
                else
                        esc[o++] = *s;
        }
        esc[o] = 0;
        snprintf(filter, sizeof(filter), upn ? "(userPrincipalName=%s)" : "(sAMAccountName=%s)", esc);
        char *attrs[] = {"1.1", NULL};
        LDAPMessage *res = NULL;
        char *out = NULL;
        if (ldap_search_ext_s(p->ld, p->nc_root, LDAP_SCOPE_SUBTREE, filter, attrs, 0, NULL, NULL, NULL, 2, &res) ==
            LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                if (e) {
                        char *d = ldap_get_dn(p->ld, e);
                        out = d ? strdup(d) : NULL;
                        ldap_memfree(d);
                }
        }
        ldap_msgfree(res);
        return out;
}

static canopy_err check_privileged(prod *p) {
        char *dn = account_dn(p);
        if (!dn) {
                canopy_log(CANOPY_LOG_ERROR, MOD, ctx_of(p),
                           "cannot find the connector account '%s' in %s to check its group memberships "
                           "(tokenGroups); refusing to start (set security.refuse_privileged: false to skip)",
                           p->cf->bind_dn ? p->cf->bind_dn : "(anonymous)", p->nc_root);
                return CANOPY_ERR_LDAP_PRIVILEGED;
        }
        char *attrs[] = {"tokenGroups", NULL};
        LDAPMessage *res = NULL;
        int rc = ldap_search_ext_s(p->ld, dn, LDAP_SCOPE_BASE, "(objectClass=*)", attrs, 0, NULL, NULL, NULL, 1, &res);
        const char *bad = NULL;
        size_t ngroups = 0;
        if (rc == LDAP_SUCCESS) {
                LDAPMessage *e = ldap_first_entry(p->ld, res);
                struct berval **v = e ? ldap_get_values_len(p->ld, e, "tokenGroups") : NULL;
                for (size_t i = 0; v && v[i] && !bad; i++, ngroups++)
                        bad = canopy_ldap_privileged_sid((const uint8_t *)v[i]->bv_val, v[i]->bv_len);
                ldap_value_free_len(v);
        }
        ldap_msgfree(res);
        canopy_err err = CANOPY_OK;
        if (rc != LDAP_SUCCESS) {
                prod_ldap_err(p, rc, "reading tokenGroups of the connector account");
                err = CANOPY_ERR_LDAP_PRIVILEGED;
        } else if (bad) {
                canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p),
                           "refusing to run: the connector account %s is a member of %s. Use a dedicated "
                           "account with only the rights its mode needs (dirsync: Replicating Directory "
                           "Changes; usn: read).",
                           dn, bad);
                err = CANOPY_ERR_LDAP_PRIVILEGED;
        } else if (ngroups == 0) {
                canopy_log(CANOPY_LOG_ERROR, MOD, ctx_of(p),
                           "tokenGroups of %s is empty or unreadable; cannot prove the account is not "
                           "privileged, refusing to start",
                           dn);
                err = CANOPY_ERR_LDAP_PRIVILEGED;
        } else {
                canopy_log(CANOPY_LOG_INFO, MOD, ctx_of(p), "connector account %s is not privileged (%zu groups)",
                           dn, ngroups);
        }
        free(dn);
        return err;
}

/* ---- connect ---- */

/* Whether a TCP connection to the URI's host and port succeeds (used to
 * tell a TLS handshake failure from a server that is down). */
static bool tcp_reachable(const char *uri, int timeout_ms) {
        LDAPURLDesc *u = NULL;
        if (ldap_url_parse(uri, &u) != LDAP_SUCCESS || !u->lud_host || !*u->lud_host) {
                ldap_free_urldesc(u);
                return false;
        }
        char port[16];
        snprintf(port, sizeof(port), "%d", u->lud_port ? u->lud_port : (!strcasecmp(u->lud_scheme, "ldaps") ? 636 : 389));
        struct addrinfo hints = {0}, *ai = NULL;
        hints.ai_socktype = SOCK_STREAM;
        bool ok = false;
        if (!getaddrinfo(u->lud_host, port, &hints, &ai)) {
                for (struct addrinfo *a = ai; a && !ok; a = a->ai_next) {
                        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK, a->ai_protocol);
                        if (fd < 0)
                                continue;
                        if (!connect(fd, a->ai_addr, a->ai_addrlen)) {
                                ok = true;
                        } else {
                                struct pollfd pf = {fd, POLLOUT, 0};
                                int err = 0;
                                socklen_t el = sizeof(err);
                                if (poll(&pf, 1, timeout_ms) == 1 && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) &&
                                    !err)
                                        ok = true;
                        }
                        close(fd);
                }
                freeaddrinfo(ai);
        }
        ldap_free_urldesc(u);
        return ok;
}

/* Whether the last failure was a certificate verification error (not worth
 * retrying: the configuration must change). */
static bool tls_failure(prod *p) {
        char *diag = NULL;
        ldap_get_option(p->ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
        bool bad = diag && (strcasestr(diag, "certificate") || strcasestr(diag, "verify"));
        if (diag)
                canopy_log(CANOPY_LOG_DEBUG, MOD, ctx_of(p), "TLS diagnostic: %s", diag);
        ldap_memfree(diag);
        return bad;
}

static canopy_err connect_one(prod *p, const char *uri) {
        canopy_producer_conf *cf = p->cf;
        LDAP *ld = NULL;
        int rc = ldap_initialize(&ld, uri);
        if (rc != LDAP_SUCCESS) {
                canopy_log(CANOPY_LOG_ERROR, MOD, ctx_of(p), "bad LDAP URI %s: %s", uri, ldap_err2string(rc));
                return CANOPY_ERR_CONFIG;
        }
        p->ld = ld;
        int v3 = LDAP_VERSION3;
        ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v3);
        ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
        struct timeval tv = {(time_t)(cf->timeout_ms / 1000), (suseconds_t)((cf->timeout_ms % 1000) * 1000)};
        ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv);
        ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);
        int keepalive = 1;
        (void)keepalive;

        bool ldaps = !strncasecmp(uri, "ldaps://", 8);
        bool ldapi = !strncasecmp(uri, "ldapi://", 8);
        bool starttls = !ldaps && !ldapi && strcmp(cf->tls, "none");
        if (!ldaps && !ldapi && !strcmp(cf->tls, "none") && !cf->allow_insecure) {
                canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p),
                           "refusing plain LDAP to %s: the password would travel in clear. Use ldaps:// or "
                           "ldap.tls: starttls, or set ldap.allow_insecure: true (tests only)",
                           uri);
                prod_disconnect(p);
                return CANOPY_ERR_LDAP_INSECURE;
        }
        if (!ldaps && !ldapi && !strcmp(cf->tls, "ldaps")) {
                canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p), "ldap.tls is ldaps but %s is not an ldaps:// URI",
                           uri);
                prod_disconnect(p);
                return CANOPY_ERR_CONFIG;
        }
        if (ldaps || starttls) {
                int req = cf->tls_verify ? LDAP_OPT_X_TLS_DEMAND : LDAP_OPT_X_TLS_NEVER;
                ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &req);
                if (cf->ca_file && *cf->ca_file)
                        ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, cf->ca_file);
                int zero = 0;
                ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
        }
        if (starttls) {
                rc = ldap_start_tls_s(ld, NULL, NULL);
                if (rc != LDAP_SUCCESS && tls_failure(p)) {
                        canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p),
                                   "StartTLS to %s failed: the server certificate could not be verified; set "
                                   "ldap.ca_file to the CA that signs it",
                                   uri);
                        prod_disconnect(p);
                        return CANOPY_ERR_CONFIG;
                }
                if (rc != LDAP_SUCCESS) {
                        prod_ldap_err(p, rc, "StartTLS");
                        prod_disconnect(p);
                        /* a server without TLS will not get one by retrying; a down one may come back */
                        return rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_TIMEOUT
                                   ? CANOPY_ERR_LDAP
                                   : CANOPY_ERR_LDAP;
                }
        }
        struct berval cred = {0, NULL};
        if (cf->password) {
                cred.bv_val = cf->password;
                cred.bv_len = strlen(cf->password);
        }
        rc = ldap_sasl_bind_s(ld, cf->bind_dn && *cf->bind_dn ? cf->bind_dn : NULL, LDAP_SASL_SIMPLE, &cred, NULL,
                              NULL, NULL);
        if (rc != LDAP_SUCCESS &&
            (tls_failure(p) || (ldaps && !p->ever_connected && (rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR) &&
                                tcp_reachable(uri, 2000)))) {
                /* the server answers TCP but the TLS handshake fails: a certificate
                 * the configured CA does not vouch for (retrying will not help) */
                canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p),
                           "TLS to %s failed: the server certificate could not be verified; set ldap.ca_file to "
                           "the CA that signs it",
                           uri);
                prod_disconnect(p);
                return CANOPY_ERR_CONFIG;
        }
        if (rc != LDAP_SUCCESS) {
                canopy_err err = prod_ldap_err(p, rc, "bind");
                prod_disconnect(p);
                if (rc == LDAP_INVALID_CREDENTIALS || rc == LDAP_INAPPROPRIATE_AUTH ||
                    rc == LDAP_CONFIDENTIALITY_REQUIRED || rc == LDAP_STRONG_AUTH_REQUIRED)
                        return CANOPY_ERR_LDAP_BIND;
                return err == CANOPY_ERR_LDAP_BIND ? err : CANOPY_ERR_LDAP;
        }
        return CANOPY_OK;
}

void prod_disconnect(prod *p) {
        if (p->ld)
                ldap_unbind_ext_s(p->ld, NULL, NULL);
        p->ld = NULL;
}

canopy_err prod_connect(prod *p) {
        canopy_producer_conf *cf = p->cf;
        size_t nuris = 0;
        while (cf->ldap_uris[nuris])
                nuris++;
        canopy_err err = CANOPY_ERR_LDAP;
        for (size_t k = 0; k < nuris; k++) {
                size_t i = (p->uri_idx + k) % nuris;
                err = connect_one(p, cf->ldap_uris[i]);
                if (!err) {
                        if (i != p->uri_idx)
                                canopy_log(CANOPY_LOG_WARN, MOD, ctx_of(p), "failed over to %s", cf->ldap_uris[i]);
                        p->uri_idx = i;
                        p->ever_connected = true;
                        break;
                }
                if (canopy_err_class_of(err) == CANOPY_ERRCLASS_FATAL)
                        return err;
        }
        if (err)
                return err;
        p->is_ad = root_has(p, "supportedCapabilities", "1.2.840.113556.1.4.800");
        free(p->nc_root);
        p->nc_root = find_nc(p);
        if (!p->norm_bases) {
                size_t n = 0;
                while (cf->base_dns[n])
                        n++;
                p->norm_bases = calloc(n + 1, sizeof(char *));
                for (size_t i = 0; i < n && p->norm_bases; i++)
                        p->norm_bases[i] = norm_dn(cf->base_dns[i]);
        }
        canopy_log(CANOPY_LOG_INFO, MOD, ctx_of(p), "connected to %s (%s, naming context %s)",
                   cf->ldap_uris[p->uri_idx], p->is_ad ? "Active Directory" : "LDAP", p->nc_root);
        if (!p->norm_self) {
                char *self = account_dn(p);
                p->norm_self = self ? norm_dn(self) : NULL;
                free(self);
        }
        if (p->is_ad && cf->refuse_privileged) {
                err = check_privileged(p);
                if (err) {
                        prod_disconnect(p);
                        return err;
                }
        }
        if (!p->is_ad && (!strcmp(cf->mode, "dirsync") || !strcmp(cf->mode, "usn"))) {
                canopy_log(CANOPY_LOG_FATAL, MOD, ctx_of(p),
                           "mode %s needs Active Directory (or Samba AD); %s is not one: use mode syncrepl or "
                           "full",
                           cf->mode, cf->ldap_uris[p->uri_idx]);
                prod_disconnect(p);
                return CANOPY_ERR_CONFIG;
        }
        return CANOPY_OK;
}
