#!/usr/bin/env python3
"""gen_users.py BASE N: N inetOrgPerson users under ou=People (slapadd input)."""
import sys
base, n = sys.argv[1], int(sys.argv[2])
w = sys.stdout.write
w(f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\ndc: {base.split(',')[0].split('=')[1]}\no: bench\n\n")
w(f"dn: ou=People,{base}\nobjectClass: organizationalUnit\nou: People\n\n")
for i in range(n):
    w(f"dn: uid=u{i:07d},ou=People,{base}\nobjectClass: inetOrgPerson\nuid: u{i:07d}\ncn: User {i}\n"
      f"sn: Number{i}\ngivenName: User\nmail: u{i:07d}@bench.test\ndisplayName: User Number {i}\n"
      f"title: Engineer\n\n")
