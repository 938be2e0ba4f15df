#!/usr/bin/python3
"""ad_grant_deleted.py SAM_LDB SMB_CONF BASE SID: give SID List Contents and Read
Property on CN=Deleted Objects (what AD administrators do with dsacls for a
non-admin account that must see tombstones). samba-tool dsacl cannot read
that container (it needs the Show Deleted control), so this edits the
security descriptor through Samba's own Python bindings on the local sam.ldb.
Runs with the system Python (/usr/bin/python3), where Samba's modules live."""
import sys
from samba.samdb import SamDB
from samba.auth import system_session
from samba.param import LoadParm
from samba.ndr import ndr_unpack, ndr_pack
from samba.dcerpc import security
import ldb
url, conf, base, sid = sys.argv[1:5]
lp = LoadParm(); lp.load(conf)
db = SamDB(url=url, session_info=system_session(), lp=lp)
dn = "CN=Deleted Objects," + base
res = db.search(base=dn, scope=ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"], controls=["show_deleted:1", "sd_flags:1:4"])
sd = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0])
domsid = security.dom_sid(db.get_domain_sid())
sddl = sd.as_sddl(domsid)
ace = "(A;CI;LCRP;;;%s)" % sid
if ace not in sddl:
    i = sddl.index("D:")
    # append the ACE after the DACL flags
    j = sddl.find("(", i)
    sddl = sddl[:j] + ace + sddl[j:] if j >= 0 else sddl + ace
new = security.descriptor.from_sddl(sddl, domsid)
m = ldb.Message(); m.dn = ldb.Dn(db, dn)
m["nTSecurityDescriptor"] = ldb.MessageElement(ndr_pack(new), ldb.FLAG_MOD_REPLACE, "nTSecurityDescriptor")
db.modify(m, controls=["show_deleted:1", "sd_flags:1:4"])
print("granted", ace)
