#!/usr/bin/env python3
"""gen_forest.py BASE [BIG]: an OpenLDAP seed LDIF with awkward data.

Users with RFC 4514 escapes in their RDN (comma, plus, quotes), Unicode and
right-to-left names, binary values (jpegPhoto, including bytes that are not
UTF-8), plus groups: one small, and one with BIG members (default 12000) to
exercise chunking."""
import base64, sys

base = sys.argv[1]
big = int(sys.argv[2]) if len(sys.argv) > 2 else 12000
dc = base.split(",")[0].split("=")[1]

def b64(s):
    b = s if isinstance(s, bytes) else s.encode("utf-8")
    return base64.b64encode(b).decode()

def attr(name, value):
    b = value if isinstance(value, bytes) else value.encode("utf-8")
    safe = all(0x20 <= c < 0x7f for c in b) and not b.startswith((b" ", b":", b"<"))
    return f"{name}: {b.decode()}" if safe else f"{name}:: {b64(b)}"

out = []
def entry(dn, *lines):
    out.append(attr("dn", dn))
    out.extend(lines)
    out.append("")

entry(base, "objectClass: dcObject", "objectClass: organization", f"dc: {dc}", "o: Canopy test forest")
for ou in ("People", "Groups", "Other", "Elsewhere"):
    entry(f"ou={ou},{base}", "objectClass: organizationalUnit", f"ou: {ou}")

users = [
    ("alice", "Alice Martin", "Martin"),
    ("bob", "Smith\\, Bob", "Smith, Bob"),          # escaped comma
    ("carol", "Carol\\+Dan", "Carol+Dan"),          # escaped plus
    ("dave", "\\\"Dave\\\" O'Neil", "\"Dave\" O'Neil"),  # quotes
    ("eve", "Ève Müller-Łukasiewicz", "Müller"),    # Unicode
    ("farid", "فريد الحسن", "الحسن"),                # right-to-left (Arabic)
    ("dina", "דינה כהן", "כהן"),                     # right-to-left (Hebrew)
]
for uid, rdn, sn in users:
    cn = rdn.replace("\\", "")
    entry(f"cn={rdn},ou=People,{base}", "objectClass: inetOrgPerson", attr("cn", cn), attr("sn", sn),
          f"uid: {uid}", f"mail: {uid}@{dc}.test", attr("displayName", cn),
          attr("jpegPhoto", bytes([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0xc3, 0x28, 0x80, 0xfe])))
entry(f"cn=outsider,ou=Other,{base}", "objectClass: inetOrgPerson", "cn: outsider", "sn: outsider", "uid: outsider")
entry(f"cn=Staff,ou=Groups,{base}", "objectClass: groupOfNames", "cn: Staff",
      f"member: cn=Alice Martin,ou=People,{base}", f"member: cn=Smith\\, Bob,ou=People,{base}")
lines = ["objectClass: groupOfNames", "cn: Big"]
lines += [f"member: uid=m{i:06d},ou=Elsewhere,{base}" for i in range(big)]
entry(f"cn=Big,ou=Groups,{base}", *lines)
sys.stdout.write("\n".join(out) + "\n")
