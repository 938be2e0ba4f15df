/* conf_producer.c: the configuration table of canopy-producer-ldap. */
#include <stddef.h>

#include "canopy/conf_producer.h"

#define P(f) offsetof(canopy_producer_conf, f)
#define NOB 0, -1 /* no bounds */

static const canopy_conf_def defs[] = {
    {"connector.id", CANOPY_CT_STR, NULL, 1, 64, CANOPY_CONF_REQUIRED, "CANOPY_CONNECTOR_ID", "A-Za-z0-9._-",
     "Connector id ([A-Za-z0-9._-], up to 64): names the forest, domain or naming context; part of every "
     "event key and of the producer's Redis keys.",
     P(connector)},
    {"mode", CANOPY_CT_ENUM, "syncrepl", NOB, 0, "CANOPY_PRODUCER_MODE", "dirsync|usn|syncrepl|full",
     "How changes are read: dirsync (AD DirSync control, needs Replicating Directory Changes), usn "
     "(uSNChanged polling, AD without DirSync rights), syncrepl (RFC 4533, OpenLDAP), full (paged full scan "
     "with an end-of-scan marker, any LDAP server).",
     P(mode)},
    {"producer.id", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_PRODUCER_ID", NULL,
     "Producer id written in every event and used as lease holder; default <hostname>-<pid>.", P(producer_id)},

    {"ldap.uris", CANOPY_CT_LIST, NULL, NOB, CANOPY_CONF_REQUIRED, "CANOPY_LDAP_URIS", NULL,
     "LDAP server URIs (ldap:// or ldaps://), tried in order: on connection loss the producer fails over "
     "to the next one.",
     P(ldap_uris)},
    {"ldap.bind_dn", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_LDAP_BIND_DN", NULL,
     "DN (or user@domain on AD) of the connector account for a simple bind; empty = anonymous.", P(bind_dn)},
    {"ldap.password", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_LDAP_PASSWORD", NULL,
     "Password of the connector account (secret: prefer ldap.password_file or the environment).", P(password)},
    {"ldap.tls", CANOPY_CT_ENUM, "starttls", NOB, 0, NULL, "ldaps|starttls|none",
     "Transport security: starttls on ldap:// URIs (default), ldaps for ldaps:// URIs, none only with "
     "ldap.allow_insecure.",
     P(tls)},
    {"ldap.allow_insecure", CANOPY_CT_BOOL, "false", NOB, 0, NULL, NULL,
     "Permit plain LDAP (password in clear on the wire). Tests only.", P(allow_insecure)},
    {"ldap.ca_file", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_LDAP_CA_FILE", NULL,
     "CA certificate file that signs the directory servers' certificates.", P(ca_file)},
    {"ldap.tls_verify", CANOPY_CT_BOOL, "true", NOB, 0, NULL, NULL,
     "Verify the server certificate and host name (never disable in production).", P(tls_verify)},
    {"ldap.timeout", CANOPY_CT_DURATION, "30s", 1000, 3600000, 0, NULL, NULL,
     "Network timeout of LDAP operations.", P(timeout_ms)},
    {"ldap.page_size", CANOPY_CT_INT, "1000", 1, 100000, 0, NULL, NULL,
     "Page size of paged searches (RFC 2696) and DirSync result size.", P(page_size)},
    {"ldap.base_dns", CANOPY_CT_LIST, NULL, NOB, CANOPY_CONF_REQUIRED, "CANOPY_LDAP_BASE_DNS", NULL,
     "Base DNs in scope. DirSync and uSNChanged read the naming context and keep the objects under these "
     "bases; an object moved out of scope becomes a delete.",
     P(base_dns)},
    {"ldap.filter", CANOPY_CT_STR, NULL, NOB, 0, NULL, NULL,
     "Extra LDAP filter ANDed with the object-class filter, e.g. (!(userAccountControl:1.2.840.113556.1.4.803:=2)).",
     P(filter)},
    {"ldap.attributes", CANOPY_CT_LIST,
     "cn, sn, givenName, displayName, mail, userPrincipalName, sAMAccountName, uid, member, uniqueMember, "
     "memberOf, description, telephoneNumber, title, department, employeeID, employeeNumber, "
     "proxyAddresses, userAccountControl, objectSid, manager, company, c, co, l, st, o, ou, "
     "departmentNumber, street, streetAddress, postalCode, mobile, physicalDeliveryOfficeName, mailNickname, "
     "pwdAccountLockedTime, extensionAttribute1, extensionAttribute2, extensionAttribute3, extensionAttribute4, "
     "extensionAttribute5, extensionAttribute6, extensionAttribute7, extensionAttribute8, extensionAttribute9, "
     "extensionAttribute10, extensionAttribute11, extensionAttribute12, extensionAttribute13, "
     "extensionAttribute14, extensionAttribute15, adminDescription, isCriticalSystemObject, groupType, "
     "msExchRecipientTypeDetails",
     NOB, 0, NULL, NULL,
     "Attributes read and published (object class, anchor and bookkeeping attributes are added).",
     P(attributes)},
    {"ldap.poll_interval", CANOPY_CT_DURATION, "2s", 100, 3600000, 0, NULL, NULL,
     "Delay between two polls in dirsync and usn modes (and between full scans in full mode with "
     "full.repeat).",
     P(poll_interval_ms)},
    {"ldap.backoff_min", CANOPY_CT_DURATION, "500ms", 10, 600000, 0, NULL, NULL,
     "First reconnect delay after a connection loss (doubles up to ldap.backoff_max).", P(backoff_min_ms)},
    {"ldap.backoff_max", CANOPY_CT_DURATION, "30s", 100, 3600000, 0, NULL, NULL, "Longest reconnect delay.",
     P(backoff_max_ms)},

    {"objects.user", CANOPY_CT_LIST, "user, inetOrgPerson", NOB, 0, NULL, NULL,
     "Object classes published as users (AD computers, which are also class user, are excluded).",
     P(user_classes)},
    {"objects.group", CANOPY_CT_LIST, "group, groupOfNames, groupOfUniqueNames", NOB, 0, NULL, NULL,
     "Object classes published as groups.", P(group_classes)},
    {"objects.contact", CANOPY_CT_LIST, "contact", NOB, 0, NULL, NULL, "Object classes published as contacts.",
     P(contact_classes)},

    {"anchor.attribute", CANOPY_CT_STR, "auto", NOB, 0, NULL, NULL,
     "Source anchor: auto (AD: mS-DS-ConsistencyGuid when set, else objectGUID; OpenLDAP: entryUUID as 16 "
     "bytes) or an attribute name. Once an object has an anchor it keeps it.",
     P(anchor_attr)},
    {"anchor.write_consistency_guid", CANOPY_CT_BOOL, "false", NOB, 0, NULL, NULL,
     "AD: write objectGUID into an empty mS-DS-ConsistencyGuid (as Entra Connect does); needs write access "
     "to that attribute.",
     P(write_consistency_guid)},

    {"members.delta", CANOPY_CT_BOOL, "true", NOB, 0, NULL, NULL,
     "syncrepl and usn modes: publish multi-valued member attributes as deltas computed against the last "
     "value set kept in Redis, so one member change is one added or removed value.",
     P(member_delta)},
    {"members.attributes", CANOPY_CT_LIST, "member, uniqueMember", NOB, 0, NULL, NULL,
     "Attributes published as deltas (members.delta) and read with ranged retrieval on AD.", P(delta_attrs)},

    {"security.refuse_privileged", CANOPY_CT_BOOL, "true", NOB, 0, NULL, NULL,
     "AD: refuse to start when the connector account is in Domain Admins, Enterprise Admins, Schema Admins "
     "or Administrators (checked through tokenGroups).",
     P(refuse_privileged)},

    CANOPY_KAFKA_CONF_DEFS(canopy_producer_conf, kafka),
    {"checkpoint.every", CANOPY_CT_INT, "2000", 1, 1000000, 0, NULL, NULL,
     "During bulk reads (initial sync, full scan), wait for Kafka and save the position every this many "
     "events.",
     P(flush_every)},

    {"redis.host", CANOPY_CT_STR, "127.0.0.1", NOB, 0, "CANOPY_REDIS_HOST", NULL, "Redis host.", P(redis_host)},
    {"redis.port", CANOPY_CT_INT, "6379", 1, 65535, 0, "CANOPY_REDIS_PORT", NULL, "Redis port.", P(redis_port)},
    {"redis.password", CANOPY_CT_SECRET, NULL, NOB, 0, "CANOPY_REDIS_PASSWORD", NULL,
     "Redis password (secret; or redis.password_file).", P(redis_password)},
    {"redis.prefix", CANOPY_CT_STR, "canopy:", NOB, 0, NULL, NULL, "Prefix of every Redis key.",
     P(redis_prefix)},
    {"lease.ttl", CANOPY_CT_DURATION, "10s", 1000, 600000, 0, NULL, NULL,
     "Leader lease time to live: a standby takes over at most this long after the leader died.",
     P(lease_ttl_ms)},

    {"metrics.listen", CANOPY_CT_STR, NULL, NOB, 0, "CANOPY_METRICS_LISTEN", NULL,
     "host:port of the Prometheus /metrics endpoint; empty = off.", P(metrics_listen)},
    {"log.level", CANOPY_CT_ENUM, "info", NOB, 0, "CANOPY_LOG_LEVEL", "debug|info|warn|error", "Log level.",
     P(log_level)},
};

const canopy_conf_table canopy_conf_producer = {
    "producer-ldap",
    "One file per connector: canopy-producer-ldap reads one forest, domain or naming context and "
    "publishes one ChangeEvent per object change to the changes topic.",
    defs,
    sizeof(defs) / sizeof(defs[0]),
    sizeof(canopy_producer_conf),
};
