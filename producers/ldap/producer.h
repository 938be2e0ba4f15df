/* producer.h (private to canopy-producer-ldap): the state of one connector's
 * producer and the functions shared by its modes. See docs/PRODUCERS.md. */
#ifndef CANOPY_PRODUCER_LDAP_H
#define CANOPY_PRODUCER_LDAP_H

#include <ldap.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "canopy/checkpoint.h"
#include "canopy/conf_producer.h"
#include "canopy/event.h"
#include "canopy/kafka.h"
#include "canopy/lease.h"
#include "canopy/metrics.h"

#define MOD "producer"
#define OID_MAX 64               /* bytes of an object id (GUID/UUID: 16; DN fallback is hashed) */
#define SEEN_MAX 20000000u       /* objects tracked during one full pass */
#define RANGE_MAX_ROUNDS 100000u /* ranged-retrieval rounds per attribute (1500 values each) */

/* Set of object ids (open addressing), for full passes. */
typedef struct oidset {
        canopy_bytes *slots;
        size_t cap, n;
} oidset;

int oidset_add(oidset *s, const void *p, size_t n); /* 0 ok, -1 nomem/cap */
bool oidset_has(const oidset *s, const void *p, size_t n);
void oidset_clear(oidset *s);

typedef enum entry_kind {
        ENTRY_FULL = 0,      /* complete image (search, syncrepl add/modify, initial DirSync) */
        ENTRY_DIRSYNC_DELTA, /* DirSync incremental: changed attributes only, member ranges as deltas */
} entry_kind;

typedef struct prod {
        canopy_producer_conf *cf;
        const char *svc;
        char *producer_id;
        volatile int *stop;

        /* LDAP */
        LDAP *ld;
        size_t uri_idx;
        bool is_ad;
        bool dirsync_search; /* the entries come from a DirSync search (incremental-value markers) */
        bool ever_connected; /* a connection succeeded once in this process */
        char *nc_root;       /* naming context that holds the bases (AD defaultNamingContext) */
        char **norm_bases;   /* normalised, lower-case base DNs */
        char *norm_self;     /* the connector account's own DN, normalised: never published */
        char *class_filter;  /* (|(objectClass=...)...) possibly ANDed with ldap.filter */
        char *ds_filter;     /* (|class_filter(isDeleted=TRUE)): DirSync and usn also read tombstones */
        char **attrs;        /* attributes requested (config + bookkeeping), NULL-terminated */

        /* Kafka and Redis */
        canopy_kafka_producer *kp;
        canopy_checkpoint *cp;
        canopy_lease *lease;

        /* delivery accounting (delivery callbacks run in our thread, inside poll/flush) */
        uint64_t produced, acked, failed;
        int64_t seq;
        uint64_t since_ckpt;  /* events produced since the last checkpoint (or seal) */
        /* pipelined checkpoints: events carry their batch generation as opaque;
         * outstanding[g & 1] counts those of generation g not yet reported */
        uint64_t gen;
        int64_t outstanding[2];
        bool sealed;          /* a sealed batch (generation gen - 1) waits for Kafka */
        int64_t last_ckpt_ms;

        /* full pass state */
        char *scan_id;        /* non-NULL while a full pass runs */
        oidset seen;
        bool tracking;        /* record object ids in `seen` (full pass, syncrepl refresh) */
        bool map_empty;       /* the object map was empty when this pass began */
        bool want_full;       /* a full scan was asked (control topic) */

        /* control */
        atomic_bool fullscan_requested;

        /* metrics */
        canopy_metric *m_events, *m_reconnects, *m_position, *m_position_s, *m_lag, *m_lag_s, *m_errors, *m_scans;
        int64_t last_usn;     /* last position as a number (USN, CSN time) for the gauges */
} prod;

/* ---- ldapconn.c ---- */
canopy_err prod_connect(prod *p);      /* connect, TLS, bind, rootDSE, security checks; tries every URI */
void prod_disconnect(prod *p);
canopy_err prod_ldap_err(prod *p, int rc, const char *what); /* map + log an LDAP error once */
bool prod_in_scope(prod *p, const char *dn);
/* The first value of ATTR of the entry DN ("" for the root DSE), NUL-terminated
 * (binary values too: *ret_len, when not NULL, gets the length); NULL when
 * it cannot be read. */
char *prod_read_attr(prod *p, const char *dn, const char *attr, size_t *ret_len);
char *prod_root_attr(prod *p, const char *attr); /* one rootDSE value (owned) or NULL */

/* ---- emit.c ---- */
void prod_delivery_cb(void *msg_opaque, canopy_err err, const char *errstr, int32_t partition, int64_t offset,
                      void *app_opaque);
/* Turn one LDAP entry into events. oid/oidlen: object id if the caller knows
 * it (syncrepl control), else NULL. deleted: a tombstone / sync delete. */
canopy_err prod_entry(prod *p, LDAPMessage *e, const void *oid, size_t oidlen, entry_kind kind, bool deleted,
                      const char *position);
/* Publish a delete for a known object id (syncIdSet, present-phase sweep). */
canopy_err prod_delete_oid(prod *p, const void *oid, size_t oidlen, const char *position);
/* Begin / end a full pass: end sweeps known objects not seen (deletes) and
 * publishes END_OF_SCAN when a scan id is set (tracking without a scan id,
 * as in a syncrepl present phase, only sweeps). */
canopy_err prod_scan_begin(prod *p);
canopy_err prod_scan_end(prod *p);
void prod_scan_abort(prod *p);
/* Wait for Kafka, then commit staged state and (if name) the position. */
canopy_err prod_checkpoint(prod *p, const char *posname, const void *pos, size_t poslen);
/* Commit if enough was produced (bulk reads) without a position. */
canopy_err prod_maybe_checkpoint(prod *p);
/* Whether we still lead; CANOPY_ERR_LEASE_LOST or SHUTDOWN if not. */
canopy_err prod_alive(prod *p);
int64_t prod_now_ms(void);

/* ---- modes ---- */
canopy_err mode_syncrepl(prod *p);
canopy_err mode_dirsync(prod *p);
canopy_err mode_usn(prod *p);
canopy_err mode_full(prod *p, bool once); /* one paged full scan (also used by every mode on request) */

/* paged search helper: calls cb for each entry. */
typedef canopy_err (*entry_cb)(prod *p, LDAPMessage *e, void *arg);
canopy_err prod_paged_search(prod *p, const char *base, const char *filter, LDAPControl *extra, entry_cb cb,
                             void *arg);

#endif
