/* cmd_rules.c: `canopyctl rules eval|check|preview|defaults`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canopy/rules.h"
#include "ctl.h"

static void rules_usage(void)
{
        fprintf(stderr,
                "usage:\n"
                "  canopyctl rules eval EXPRESSION [--attr name=value ...] [--dn DN] [--json FILE | --ldif FILE]\n"
                "      evaluate an Entra mapping expression on an object; prints the value,\n"
                "      or the error with a caret under the spot (exit 1)\n"
                "  canopyctl rules check FILE\n"
                "      load and compile a rules file; lists every error (exit 1 when any)\n"
                "  canopyctl rules preview FILE --object FILE.json|FILE.ldif [--connector ID] [--type user|group|contact]\n"
                "      scope decision, join keys and every target property of an object\n"
                "  canopyctl rules defaults\n"
                "      print the built-in default connectors and flows (YAML)\n");
}

static bool has_suffix(const char *s, const char *suf)
{
        size_t a = strlen(s), b = strlen(suf);
        return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmd_eval(int argc, char **argv)
{
        if (argc < 1) {
                rules_usage();
                return 2;
        }
        const char *src = argv[0];
        ctl_object o = {0};
        int rc = 2;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--attr") && i + 1 < argc) {
                        if (ctl_object_add_arg(&o, argv[++i]))
                                goto out;
                } else if (!strcmp(argv[i], "--dn") && i + 1 < argc) {
                        free(o.dn);
                        o.dn = strdup(argv[++i]);
                } else if ((!strcmp(argv[i], "--json") || !strcmp(argv[i], "--ldif")) && i + 1 < argc) {
                        bool ldif = !strcmp(argv[i], "--ldif");
                        if (ctl_object_load(&o, argv[++i], ldif))
                                goto out;
                } else {
                        fprintf(stderr, "canopyctl rules eval: unexpected argument '%s'\n", argv[i]);
                        goto out;
                }
        }
        canopy_expr *e = NULL;
        canopy_expr_error er;
        canopy_err err = canopy_expr_compile(src, strlen(src), NULL, &e, &er);
        if (err) {
                char *m = canopy_expr_format_error("<expr>", src, strlen(src), 1, 1, &er);
                fputs(m ? m : er.msg, stderr);
                free(m);
                rc = 1;
                goto out;
        }
        canopy_obj_view v;
        ctl_object_view(&o, &v, "cli", NULL);
        canopy_arena *a = canopy_arena_new(0, 0);
        canopy_value val;
        canopy_expr_error ee;
        memset(&ee, 0, sizeof(ee));
        err = a ? canopy_expr_eval_at(e, &v, NULL, a, &val, &ee) : CANOPY_ERR_NOMEM;
        if (err == CANOPY_ERR_EXPR_SKIP) {
                printf("(flow skipped: IgnoreFlowIfNullOrEmpty)\n");
                rc = 0;
        } else if (err) {
                /* The same shape as a compile error: where, what, a caret. */
                char what[sizeof(ee.msg) + 64];
                snprintf(what, sizeof(what), "evaluation failed (%s)%s%s", canopy_err_name(err), ee.msg[0] ? ": " : "",
                         ee.msg);
                size_t wl = strlen(what);
                if (wl >= sizeof(ee.msg))
                        wl = sizeof(ee.msg) - 1;
                memcpy(ee.msg, what, wl);
                ee.msg[wl] = '\0';
                char *m = canopy_expr_format_error("<expr>", src, strlen(src), 1, 1, &ee);
                fputs(m ? m : ee.msg, stderr);
                free(m);
                rc = 1;
        } else {
                ctl_print_value(&val, a);
                rc = 0;
        }
        canopy_arena_free(a);
        canopy_expr_free(e);
out:
        ctl_object_free(&o);
        return rc;
}

static int cmd_check(int argc, char **argv)
{
        if (argc != 1) {
                rules_usage();
                return 2;
        }
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        canopy_err err = canopy_rules_load_file(argv[0], &r, &d);
        if (err) {
                fputs(canopy_rules_diags_text(&d), stderr);
                fprintf(stderr, "%s: %zu error%s (%s)\n", argv[0], d.n, d.n == 1 ? "" : "s", canopy_err_name(err));
                canopy_rules_diags_free(&d);
                return 1;
        }
        size_t nflows = 0;
        static const char *const types[] = {"user", "group", "contact"};
        for (size_t t = 0; t < 3; t++) {
                const char *const *names;
                size_t n;
                canopy_rules_targets(r, types[t], &names, &n);
                nflows += n;
        }
        printf("%s: OK (%zu connector%s, %zu target properties)\n", argv[0], canopy_rules_connector_count(r),
               canopy_rules_connector_count(r) == 1 ? "" : "s", nflows);
        canopy_rules_free(r);
        return 0;
}

static int cmd_preview(int argc, char **argv)
{
        const char *file = NULL, *objf = NULL, *connector = NULL, *type = NULL;
        for (int i = 0; i < argc; i++) {
                if (!strcmp(argv[i], "--object") && i + 1 < argc)
                        objf = argv[++i];
                else if (!strcmp(argv[i], "--connector") && i + 1 < argc)
                        connector = argv[++i];
                else if (!strcmp(argv[i], "--type") && i + 1 < argc)
                        type = argv[++i];
                else if (!file && argv[i][0] != '-')
                        file = argv[i];
                else {
                        rules_usage();
                        return 2;
                }
        }
        if (!file || !objf) {
                rules_usage();
                return 2;
        }
        canopy_rules *r = NULL;
        canopy_rules_diags d = {0};
        if (canopy_rules_load_file(file, &r, &d)) {
                fputs(canopy_rules_diags_text(&d), stderr);
                canopy_rules_diags_free(&d);
                return 1;
        }
        int rc = 1;
        ctl_object o = {0};
        canopy_arena *a = canopy_arena_new(0, 0);
        if (!a || ctl_object_load(&o, objf, has_suffix(objf, ".ldif")))
                goto out;
        if (!connector) {
                const canopy_rules_connector *c0 = canopy_rules_connector_at(r, 0);
                if (!c0) {
                        fprintf(stderr, "%s: no connector\n", file);
                        goto out;
                }
                connector = c0->id;
        }
        if (!canopy_rules_connector_find(r, connector)) {
                fprintf(stderr, "canopyctl: unknown connector '%s'\n", connector);
                goto out;
        }
        canopy_obj_view v;
        ctl_object_view(&o, &v, connector, type);
        const char *otype = canopy_rules_object_type(r, &v);
        canopy_scope_result sr;
        canopy_rules_scope(r, &v, NULL, &sr);
        printf("connector: %s\ndn: %s\nobject type: %s\nscope: %s (%s)\n", connector, o.dn ? o.dn : "(none)",
               otype ? otype : "(not synchronized)", sr.in_scope ? "IN" : "OUT", sr.reason);
        canopy_bytes anc;
        if (canopy_rules_anchor(r, &v, a, &anc) == CANOPY_OK) {
                canopy_value av = {.type = CANOPY_V_BIN, .u.str = {(const char *)anc.data, anc.len}};
                printf("anchor: %s\n", canopy_value_to_text(&av, "", a));
        } else {
                printf("anchor: (none)\n");
        }
        if (!otype) {
                rc = 0;
                goto out;
        }
        const canopy_join_rule *jr;
        size_t njr;
        canopy_rules_join_rules(r, connector, otype, &jr, &njr);
        for (size_t i = 0; i < njr; i++) {
                const char *const *keys;
                size_t nk;
                canopy_rules_join_values(r, &jr[i], &v, a, &keys, &nk);
                printf("join %zu: %s -> %s:", i + 1, jr[i].source, jr[i].mv);
                for (size_t k = 0; k < nk; k++)
                        printf(" %s", keys[k]);
                printf("%s\n", nk ? "" : " (no value)");
        }
        const char *ma = canopy_rules_member_attribute(r, connector, otype);
        if (ma)
                printf("members from: %s\n", ma);
        const canopy_obj_view *views[1] = {&v};
        canopy_rules_desired des;
        char msg[512];
        canopy_err err = canopy_rules_compute(r, otype, views, 1, NULL, a, &des, msg, sizeof(msg));
        if (err) {
                fprintf(stderr, "canopyctl: attribute flow failed: %s: %s\n", canopy_err_name(err), msg);
                goto out;
        }
        printf("properties:\n");
        for (size_t i = 0; i < des.n; i++) {
                const canopy_rules_prop *p = &des.props[i];
                printf("  %s = ", p->name);
                if (p->value.type == CANOPY_V_NULL)
                        printf("(clear)\n");
                else
                        ctl_print_value(&p->value, a);
                if (p->create_only)
                        printf("      (only on create)\n");
        }
        rc = 0;
out:
        ctl_object_free(&o);
        canopy_arena_free(a);
        canopy_rules_free(r);
        return rc;
}

static int run(int argc, char **argv)
{
        if (argc < 1) {
                rules_usage();
                return 2;
        }
        if (!strcmp(argv[0], "eval"))
                return cmd_eval(argc - 1, argv + 1);
        if (!strcmp(argv[0], "check"))
                return cmd_check(argc - 1, argv + 1);
        if (!strcmp(argv[0], "preview"))
                return cmd_preview(argc - 1, argv + 1);
        if (!strcmp(argv[0], "defaults")) {
                fputs(canopy_rules_defaults_yaml(), stdout);
                return 0;
        }
        rules_usage();
        return 2;
}

const canopyctl_cmd canopyctl_cmd_rules = {"rules", "evaluate expressions, check and preview sync rules", run,
                                           rules_usage};
