/* canopy-genforest: generate a sample OpenLDAP forest as LDIF.
 *
 * The data is deliberately awkward: Unicode and right-to-left names, RDNs
 * that need escaping (commas, plus signs, quotes), nested groups, a few large
 * groups, and people present in several forests (same mail, so that the
 * default join rule on mail joins them).
 *
 *   canopy-genforest --base dc=north,dc=canopy,dc=test --users 5000 --groups 500 \
 *                    --shared 500 --forest 0 --domain canopy.test > north.ldif
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rng(void) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return rng_state;
}

static const char *given[] = {
    "Anna", "Bjørn", "Chloé", "Dmitri", "Élodie", "François", "Grzegorz", "Hana", "Ingrid", "José",
    "Kārlis", "Léa", "Mårten", "Nuño", "Øyvind", "Paweł", "Quentin", "Renée", "Søren", "Tomás",
    "Ulrike", "Václav", "Wojciech", "Xavier", "Yūko", "Zoë", "محمد", "דוד", "Αλέξης", "Иван",
};
static const char *family[] = {
    "Müller", "O'Brien", "Łukasiewicz", "Ñúñez", "Smith", "García", "Dvořák", "Håkansson", "Nguyễn",
    "Kowalski", "Van der Berg", "Đorđević", "Brontë", "Schröder", "Yılmaz", "Åström", "Jørgensen",
    "Lefèvre", "Papadopoulos", "Petrović", "Rossi", "Tanaka", "Öztürk", "Zieliński", "Ferreira",
    "عبدالله", "כהן", "Παπαδάκης", "Смирнов", "Wiśniewski",
};
static const char *titles[] = {"Engineer", "Analyst", "Manager", "Director", "Technician", "Consultant"};
static const char *depts[] = {"R&D", "Finance", "Sales, EMEA", "HR", "IT", "Legal", "Ops"};

/* Escape an RDN value per RFC 4514: , + " \ < > ; and leading # or space,
 * trailing space. */
static void rdn_escape(char *out, size_t cap, const char *in) {
        size_t o = 0;
        size_t n = strlen(in);
        for (size_t i = 0; i < n && o + 3 < cap; i++) {
                char c = in[i];
                int esc = strchr(",+\"\\<>;=", c) != NULL || (i == 0 && (c == '#' || c == ' ')) ||
                          (i == n - 1 && c == ' ');
                if (esc)
                        out[o++] = '\\';
                out[o++] = c;
        }
        out[o] = 0;
}

/* LDIF needs base64 for values that are not SAFE-STRING (non-ASCII, leading
 * space/colon/<). */
static void b64(const unsigned char *in, size_t len, char *out) {
        static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t o = 0;
        for (size_t i = 0; i < len; i += 3) {
                unsigned v = (unsigned)in[i] << 16;
                if (i + 1 < len)
                        v |= (unsigned)in[i + 1] << 8;
                if (i + 2 < len)
                        v |= in[i + 2];
                out[o++] = t[(v >> 18) & 63];
                out[o++] = t[(v >> 12) & 63];
                out[o++] = i + 1 < len ? t[(v >> 6) & 63] : '=';
                out[o++] = i + 2 < len ? t[v & 63] : '=';
        }
        out[o] = 0;
}

static void attr(const char *name, const char *val) {
        const unsigned char *p = (const unsigned char *)val;
        int safe = *p != ' ' && *p != ':' && *p != '<';
        for (; *p && safe; p++)
                if (*p >= 0x80 || *p == '\n' || *p == '\r')
                        safe = 0;
        if (val[0] && val[strlen(val) - 1] == ' ')
                safe = 0;
        if (safe) {
                printf("%s: %s\n", name, val);
        } else {
                char buf[4096];
                b64((const unsigned char *)val, strlen(val), buf);
                printf("%s:: %s\n", name, buf);
        }
}

static void usage(FILE *f) {
        fprintf(f,
                "usage: canopy-genforest --base DN [options] > forest.ldif\n"
                "  --base DN        base DN (dc=...), required\n"
                "  --users N        users (default 100)\n"
                "  --groups N       groups (default users/10)\n"
                "  --shared N       the first N users also exist in every other forest\n"
                "                   generated with the same --shared (same mail: joined)\n"
                "  --forest I       forest index (0, 1, ...) for distinct names (default 0)\n"
                "  --domain D       mail domain (default canopy.test)\n"
                "  --large N        members of the largest group (default min(users, 2000))\n"
                "  --members N      average members of the other groups (1..2N-1, uniform;\n"
                "                   default 1..20)\n"
                "  --big-groups K   groups 1..K get --big-size members each (default 0)\n"
                "  --big-size M     members of each of the --big-groups (default users/5)\n"
                "  --excluded N     users in ou=Excluded (out of the default scope example)\n"
                "  --seed S         random seed (default 1)\n");
}

/* uid: shared people keep one uid in every forest, others are per forest. */
static long g_shared, g_forest;

static void user_uid(char *out, size_t cap, long i) {
        if (i < g_shared)
                snprintf(out, cap, "s%06ld", i);
        else
                snprintf(out, cap, "f%ldu%06ld", g_forest, i);
}

static void user_dn(char *out, size_t cap, int i, const char *base) {
        /* Every 7th user has a cn RDN that needs escaping. */
        if (i % 7 == 3) {
                char cn[512], esc[1024];
                snprintf(cn, sizeof(cn), "%s, %s+%d \"%s\"", family[i % 30], given[(i / 30) % 30], i,
                         titles[i % 6]);
                rdn_escape(esc, sizeof(esc), cn);
                snprintf(out, cap, "cn=%s,ou=People,%s", esc, base);
        } else {
                char uid[64];
                user_uid(uid, sizeof(uid), i);
                snprintf(out, cap, "uid=%s,ou=People,%s", uid, base);
        }
}

int main(int argc, char **argv) {
        const char *base = NULL, *domain = "canopy.test";
        long users = 100, groups = -1, shared = 0, forest = 0, large = -1, excluded = 0, seed = 1;
        long members = -1, big_groups = 0, big_size = -1;
        static const struct option opts[] = {
            {"base", 1, 0, 'b'},   {"users", 1, 0, 'u'},  {"groups", 1, 0, 'g'},    {"shared", 1, 0, 's'},
            {"forest", 1, 0, 'f'}, {"domain", 1, 0, 'd'}, {"large", 1, 0, 'l'},     {"seed", 1, 0, 'S'},
            {"excluded", 1, 0, 'x'}, {"members", 1, 0, 'm'}, {"big-groups", 1, 0, 'k'},
            {"big-size", 1, 0, 'K'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0},
        };
        int c;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                char *end = NULL;
                long v = optarg ? strtol(optarg, &end, 10) : 0;
                int num = optarg && end && *end == 0 && v >= 0;
                switch (c) {
                case 'b': base = optarg; break;
                case 'd': domain = optarg; break;
                case 'u': case 'g': case 's': case 'f': case 'l': case 'S': case 'x': case 'm': case 'k': case 'K':
                        if (!num) {
                                fprintf(stderr, "canopy-genforest: option -%c wants a non-negative number, got '%s'\n",
                                        c, optarg);
                                return 2;
                        }
                        if (c == 'u') users = v;
                        if (c == 'g') groups = v;
                        if (c == 's') shared = v;
                        if (c == 'f') forest = v;
                        if (c == 'l') large = v;
                        if (c == 'S') seed = v;
                        if (c == 'x') excluded = v;
                        if (c == 'm') members = v;
                        if (c == 'k') big_groups = v;
                        if (c == 'K') big_size = v;
                        break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        if (!base || strncasecmp(base, "dc=", 3)) {
                fprintf(stderr, "canopy-genforest: --base dc=... is required\n");
                usage(stderr);
                return 2;
        }
        if (groups < 0)
                groups = users / 10;
        if (large < 0)
                large = users < 2000 ? users : 2000;
        if (shared > users)
                shared = users;
        if (big_size < 0)
                big_size = users / 5;
        if (members == 0) {
                fprintf(stderr, "canopy-genforest: --members wants at least 1\n");
                return 2;
        }
        g_shared = shared;
        g_forest = forest;
        rng_state ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull + (uint64_t)forest;

        char dc[256];
        const char *eq = strchr(base, '=');
        size_t dl = strcspn(eq + 1, ",");
        snprintf(dc, sizeof(dc), "%.*s", (int)dl, eq + 1);

        printf("dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: %s\no: %s\n\n", base, dc, dc);
        printf("dn: ou=People,%s\nobjectClass: organizationalUnit\nou: People\n\n", base);
        printf("dn: ou=Groups,%s\nobjectClass: organizationalUnit\nou: Groups\n\n", base);
        if (excluded)
                printf("dn: ou=Excluded,%s\nobjectClass: organizationalUnit\nou: Excluded\n\n", base);

        char dn[2048], buf[1024];
        for (long i = 0; i < users; i++) {
                const char *g = given[(i + forest * 7) % 30], *f = family[(i / 30 + forest * 3) % 30];
                if (i < shared) {
                        g = given[i % 30];
                        f = family[(i / 30) % 30];
                }
                user_dn(dn, sizeof(dn), (int)i, base);
                attr("dn", dn);
                printf("objectClass: inetOrgPerson\n");
                user_uid(buf, sizeof(buf), i);
                if (i % 7 == 3) {
                        /* The cn is the (unescaped) RDN value. */
                        snprintf(buf, sizeof(buf), "%s, %s+%ld \"%s\"", family[i % 30], given[(i / 30) % 30], i,
                                 titles[i % 6]);
                        attr("cn", buf);
                        user_uid(buf, sizeof(buf), i);
                        attr("uid", buf);
                } else {
                        attr("uid", buf);
                        snprintf(buf, sizeof(buf), "%s %s", g, f);
                        attr("cn", buf);
                }
                attr("givenName", g);
                attr("sn", f);
                snprintf(buf, sizeof(buf), "%s %s", g, f);
                attr("displayName", buf);
                if (i < shared)
                        snprintf(buf, sizeof(buf), "shared.%06ld@%s", i, domain);
                else
                        snprintf(buf, sizeof(buf), "f%ld.u%06ld@%s", forest, i, domain);
                attr("mail", buf);
                snprintf(buf, sizeof(buf), "%ld%06ld", forest + 1, i);
                attr("employeeNumber", buf);
                attr("title", titles[rng() % 6]);
                attr("departmentNumber", depts[rng() % 7]);
                printf("\n");
        }
        for (long i = 0; i < excluded; i++) {
                snprintf(dn, sizeof(dn), "uid=x%06ld,ou=Excluded,%s", i, base);
                attr("dn", dn);
                printf("objectClass: inetOrgPerson\n");
                snprintf(buf, sizeof(buf), "x%06ld", i);
                attr("uid", buf);
                attr("cn", buf);
                attr("sn", "Excluded");
                snprintf(buf, sizeof(buf), "f%ld.x%06ld@%s", forest, i, domain);
                attr("mail", buf);
                printf("\n");
        }
        for (long gi = 0; gi < groups; gi++) {
                snprintf(buf, sizeof(buf), "f%ld-g%05ld %s", forest, gi, depts[gi % 7]);
                char esc[1024];
                rdn_escape(esc, sizeof(esc), buf);
                snprintf(dn, sizeof(dn), "cn=%s,ou=Groups,%s", esc, base);
                attr("dn", dn);
                printf("objectClass: groupOfNames\n");
                attr("cn", buf);
                snprintf(buf, sizeof(buf), "Sample group %ld of forest %ld", gi, forest);
                attr("description", buf);
                long n;
                if (gi == 0)
                        n = large;
                else if (gi <= big_groups)
                        n = big_size;
                else if (members > 0)
                        n = 1 + (long)(rng() % (uint64_t)(2 * members - 1));
                else
                        n = 1 + (long)(rng() % 20);
                if (n > users)
                        n = users;
                if (n == 0) {
                        /* groupOfNames needs one member: an empty DN is the convention. */
                        printf("member:\n");
                }
                /* Groups 1..big_groups start at spread offsets (no rng draw,
                 * so that output without --big-groups is unchanged). */
                long start = gi == 0 ? 0
                             : gi <= big_groups ? (gi * (users / (big_groups + 1))) % (users ? users : 1)
                                                : (long)(rng() % (users ? users : 1));
                for (long m = 0; m < n; m++) {
                        user_dn(dn, sizeof(dn), (int)((start + m) % users), base);
                        attr("member", dn);
                }
                /* Nested: every 10th group contains the next group. */
                if (gi % 10 == 1 && gi + 1 < groups) {
                        snprintf(buf, sizeof(buf), "f%ld-g%05ld %s", forest, gi + 1, depts[(gi + 1) % 7]);
                        rdn_escape(esc, sizeof(esc), buf);
                        snprintf(dn, sizeof(dn), "cn=%s,ou=Groups,%s", esc, base);
                        attr("member", dn);
                }
                printf("\n");
        }
        if (fflush(stdout) || ferror(stdout)) {
                fprintf(stderr, "canopy-genforest: write failed: %s\n", strerror(errno));
                return 1;
        }
        return 0;
}
