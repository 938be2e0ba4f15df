#!/bin/sh
# canopyctl rules eval/check/preview on the examples (ctest unit.canopyctl_rules).
set -u
CTL=$1
EX=$2
fail=0
check() { # name expected actual
        if [ "$2" != "$3" ]; then
                echo "FAIL $1: expected [$2] got [$3]"
                fail=1
        else
                echo "ok   $1"
        fi
}
check eval-append "John.Doe@contoso.com.test" "$($CTL rules eval 'Append([userPrincipalName], ".test")' --attr userPrincipalName=John.Doe@contoso.com)"
check eval-ldif "Zoë Müller" "$($CTL rules eval 'Join(" ", [givenName], [sn])' --ldif "$EX/user.ldif")"
check eval-json '["+1 555 0100", "+1 555 0101"]' "$($CTL rules eval '[telephoneNumber]' --json "$EX/user.json")"
check eval-null "(null)" "$($CTL rules eval '[nothing]')"
out=$($CTL rules eval 'Left("abc", "x")' 2>&1)
check eval-error-rc 1 $?
check eval-caret "            ^" "$(printf '%s\n' "$out" | tail -n 1)"
# A runtime error points at the call that failed, inside the expression.
out=$($CTL rules eval 'Join(",", [sn], Item([m], 3))' --attr sn=Ågren --attr m=a --attr m=b 2>&1)
check eval-runtime-rc 1 $?
check eval-runtime-msg "<expr>:1:17: error: evaluation failed (EXPR_EVAL): Item: index 3 out of bounds (1..2)" \
        "$(printf '%s\n' "$out" | head -n 1)"
check eval-runtime-caret "                ^" "$(printf '%s\n' "$out" | tail -n 1)"
$CTL rules check "$EX/rules.yaml" >/dev/null
check check-good-rc 0 $?
out=$($CTL rules check "$EX/bad.yaml" 2>&1)
check check-bad-rc 1 $?
check check-bad-count 4 "$(printf '%s\n' "$out" | grep -c ': error: ')"
check check-bad-foo "bad.yaml:9:47: error: unknown function 'Foo'" "$(printf '%s\n' "$out" | grep "unknown function 'Foo'" | sed 's|.*/||')"
out=$($CTL rules preview "$EX/rules.yaml" --object "$EX/user.ldif")
check preview-scope "scope: IN (in scope: filter group 1 matched)" "$(printf '%s\n' "$out" | grep '^scope:')"
check preview-upn "  userPrincipalName = Zoe.Muller@corp.example.com" "$(printf '%s\n' "$out" | grep 'userPrincipalName =')"
exit $fail
