#!/usr/bin/env bash
# usage: scripts/tune.sh [--apply]
#
# Shows what a load test on Linux needs, and with --apply sets it (as root) and prints what it
# changed: the open-file limit of this shell (soft up to hard), net.core.somaxconn,
# net.ipv4.tcp_max_syn_backlog, net.ipv4.ip_local_port_range and net.ipv4.tcp_tw_reuse.
# Settings are not persisted across reboots.
set -euo pipefail

apply=0
case ${1:-} in
  --apply) apply=1 ;;
  '') ;;
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) sed -n '2p' "$0" | sed 's/^# //'; exit 2 ;;
esac

# name|wanted|how to compare (min: at least; eq: exactly)
wanted=(
  "net.core.somaxconn|65535|min"
  "net.ipv4.tcp_max_syn_backlog|65535|min"
  "net.ipv4.ip_local_port_range|1024 65535|eq"
  "net.ipv4.tcp_tw_reuse|1|eq"
)

printf '%-32s %-16s %-16s %s\n' setting current wanted status
soft=$(ulimit -Sn) hard=$(ulimit -Hn)
status=ok
[[ $soft == "$hard" ]] || status="low (soft < hard)"
if ((apply)) && [[ $status != ok ]]; then
  ulimit -Sn "$hard" && echo "changed: open files (this shell) $soft -> $hard"
  soft=$(ulimit -Sn) status="ok (this shell only)"
fi
printf '%-32s %-16s %-16s %s\n' "open files (soft/hard)" "$soft/$hard" "soft = hard" "$status"

for w in "${wanted[@]}"; do
  IFS='|' read -r name want how <<<"$w"
  path=/proc/sys/${name//.//}
  if [[ ! -r $path ]]; then
    printf '%-32s %-16s %-16s %s\n' "$name" "-" "$want" "not available here"
    continue
  fi
  cur=$(tr -s '\t ' ' ' <"$path")
  if [[ $how == min ]]; then ok=$((cur >= want)); else ok=$([[ $cur == "$want" ]] && echo 1 || echo 0); fi
  status=$([[ $ok == 1 ]] && echo ok || echo "needs change")
  if ((apply)) && [[ $ok == 0 ]]; then
    if echo "$want" >"$path" 2>/dev/null; then
      echo "changed: $name $cur -> $want"
      status=ok cur=$want
    else
      status="cannot change (read-only here)"
    fi
  fi
  printf '%-32s %-16s %-16s %s\n' "$name" "$cur" "$want" "$status"
done
((apply)) || echo "run with --apply (as root) to change what needs it"
