#!/bin/sh
# Tandem host procedure: the iSCSI and multipath steps of docs/hosts/README.md.
# Works on a XenServer/XCP-ng dom0 and on any Linux with open-iscsi and
# multipath-tools. The lab guest runs this very script (tests/lab).
#
#   host-setup.sh configure INITIATOR_IQN
#       set the initiator name, apply iscsid.conf, install the multipath stanza
#       (then restart iscsid and reload multipathd)
#   host-setup.sh connect PORTAL[:PORT] [PORTAL[:PORT] ...]
#       SendTargets discovery on every portal, then log in to every target
#       discovered through each portal
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ISCSID_CONF=${ISCSID_CONF:-/etc/iscsi/iscsid.conf}
MULTIPATH_DEST=${MULTIPATH_DEST:-/etc/multipath/conf.d/tandem.conf}
INITIATORNAME_FILE=${INITIATORNAME_FILE:-/etc/iscsi/initiatorname.iscsi}

configure() {
	iqn=$1
	echo "InitiatorName=$iqn" > "$INITIATORNAME_FILE"
	grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$here/iscsid.conf" |
	while IFS= read -r line; do
		key=$(printf '%s' "${line%%=*}" | sed 's/[[:space:]]*$//')
		pat=$(printf '%s' "$key" | sed 's/[].[]/\\&/g')
		if grep -q "^[#[:space:]]*${pat}[[:space:]]*=" "$ISCSID_CONF"; then
			sed -i "s|^[#[:space:]]*${pat}[[:space:]]*=.*|$line|" "$ISCSID_CONF"
		else
			echo "$line" >> "$ISCSID_CONF"
		fi
	done
	mkdir -p "$(dirname "$MULTIPATH_DEST")"
	cp "$here/multipath.conf" "$MULTIPATH_DEST"
}

connect() {
	for portal in "$@"; do
		iscsiadm -m discovery -t sendtargets -p "$portal"
	done
	for portal in "$@"; do
		case $portal in *:*) ;; *) portal=$portal:3260 ;; esac
		iscsiadm -m node -p "$portal" --login
	done
}

cmd=${1:-}; [ $# -gt 0 ] && shift
case $cmd in
	configure) [ $# = 1 ] || { echo "usage: $0 configure INITIATOR_IQN" >&2; exit 2; }; configure "$1" ;;
	connect) [ $# -ge 1 ] || { echo "usage: $0 connect PORTAL..." >&2; exit 2; }; connect "$@" ;;
	*) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
