#!/usr/bin/env python3
"""Writes the 'odd' forest of the bad-input test: awkward LDAP values.

Usage: gen_odd.py BASE_DN > odd.ldif
"""
import base64
import os
import sys

base = sys.argv[1]
out = sys.stdout


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


def entry(dn: str, attrs):
    out.write("dn:: %s\n" % b64(dn.encode()))
    for name, val in attrs:
        if isinstance(val, str):
            val = val.encode()
        out.write("%s:: %s\n" % (name, b64(val)))
    out.write("\n")


entry(base, [("objectClass", "dcObject"), ("objectClass", "organization"), ("dc", base.split(",")[0][3:]),
             ("o", "odd")])
entry("ou=People," + base, [("objectClass", "organizationalUnit"), ("ou", "People")])
entry("ou=Groups," + base, [("objectClass", "organizationalUnit"), ("ou", "Groups")])


def person(rdn, uid, display, mail, extra=()):
    dn = rdn + ",ou=People," + base
    attrs = [("objectClass", "inetOrgPerson"), ("uid", uid), ("cn", display), ("sn", display.split()[-1]),
             ("displayName", display), ("mail", mail)] + list(extra)
    entry(dn, attrs)
    return dn


people = []
# Unicode and right-to-left names.
people.append(person("uid=rtl1", "rtl1", "أحمد عبدالله", "rtl1@canopy.test"))
people.append(person("uid=rtl2", "rtl2", "דוד כהן", "rtl2@canopy.test", [("title", "מנהל\u200f")]))
people.append(person("uid=cjk", "cjk", "山田 太郎", "cjk@canopy.test", [("title", "\U0001F600 emoji")]))
# Escaped DNs: comma, plus, quotes, semicolon, backslash, leading '#', multi-valued RDN.
people.append(person('cn=O\\"Neil\\, Jr\\+\\;\\\\x+uid=oneil', "oneil", 'O"Neil, Jr+;\\x', "o'neil@canopy.test"))
people.append(person("cn=\\#hash\\, \\<angle\\>", "hash", "#hash, <angle>", "hash@canopy.test"))
# Values built to inject into OData or LDAP filters: they are just values.
people.append(person("uid=inject1", "inject1", "x' or 1 eq 1 or 'y", "inject1@canopy.test",
                     [("title", "') or (mail eq '*"), ("description", "*)(uid=*))(|(uid=*")]))
people.append(person("uid=inject2", "inject2", "$filter=startswith(displayName,'a')&$top=999", "inject2@canopy.test",
                     [("title", "%27 or 1 eq 1--"), ("employeeNumber", "1' or '1'='1")]))
# Binary data where the rules do not expect it.
people.append(person("uid=binary", "binary", "Binary Person", "binary@canopy.test",
                     [("jpegPhoto", bytes(range(256)) * 8)]))
# 10,000 values of a multi-valued attribute (description).
many = [("description", "value %05d" % i) for i in range(10000)]
people.append(person("uid=many", "many", "Many Values", "many@canopy.test", many))

# Groups whose names (hence mailNickname, the hard-match key of groups) carry
# quotes, asterisks, parentheses and $filter syntax, next to the groups a
# broken quoting would match instead.
entry("cn=All,ou=Groups," + base, [("objectClass", "groupOfNames"), ("cn", "All"), ("description", "victim"),
                                   ("member", people[0])])
entry("cn=x,ou=Groups," + base, [("objectClass", "groupOfNames"), ("cn", "x"), ("description", "victim 2"),
                                 ("member", people[1])])
entry("cn=x' or mailNickname eq 'All,ou=Groups," + base,
      [("objectClass", "groupOfNames"), ("cn", "x' or mailNickname eq 'All"), ("description", "inject"),
       ("member", people[2]), ("member", people[3])])
entry("cn=Star*$filter=mailNickname eq '*',ou=Groups," + base,
      [("objectClass", "groupOfNames"), ("cn", "Star*$filter=mailNickname eq '*'"), ("member", people[4])])
# A group with 10,000 member values: every person above, the rest DNs that do not exist.
members = [("member", p) for p in people] + [("member", "uid=ghost%05d,ou=People,%s" % (i, base))
                                              for i in range(10000 - len(people))]
entry("cn=Big\\, Group,ou=Groups," + base, [("objectClass", "groupOfNames"), ("cn", "Big, Group")] + members)
