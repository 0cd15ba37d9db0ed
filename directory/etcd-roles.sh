#!/bin/sh
# Sets up etcd's authentication for the VirtualWire directory domain DOMAIN:
# one etcd user per host (named as the host, which is the common name of the
# host's client certificate), whose role may read the whole domain, write its
# own host key and its own endpoint keys, and create and delete wires, and
# nothing else. Enables authentication (a root user without password is
# created if missing: only a client certificate with CN=root is root).
#
#   directory/etcd-roles.sh DOMAIN HOST...
#
# etcdctl is run as is: give it the cluster and root's certificate in its
# environment, for example
#   ETCDCTL_ENDPOINTS=https://10.0.0.9:2379 ETCDCTL_CACERT=ca.pem \
#   ETCDCTL_CERT=root.pem ETCDCTL_KEY=root-key.pem directory/etcd-roles.sh lab h1 h2
# Running it again adds hosts and changes nothing that is already set.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 DOMAIN HOST..." >&2
    exit 2
fi
export ETCDCTL_API=3
domain=$1
shift
case $domain in *[!A-Za-z0-9_.-]* | '') echo "$0: bad domain name: $domain" >&2; exit 2 ;; esac
p=/virtualwire/$domain

# Runs etcdctl; "already exists" / "already granted" is not an error.
ctl() {
    if ! out=$(etcdctl "$@" 2>&1); then
        case $out in
            *"already exists"* | *"already granted"* | *"already enabled"*) ;;
            *) echo "etcdctl $*: $out" >&2; exit 1 ;;
        esac
    fi
}

for h in "$@"; do
    case $h in *[!A-Za-z0-9_.-]* | '') echo "$0: bad host name: $h" >&2; exit 2 ;; esac
    r=vw-$domain-$h
    ctl role add "$r"
    ctl role grant-permission --prefix=true "$r" read "$p/"
    ctl role grant-permission "$r" readwrite "$p/hosts/$h"
    ctl role grant-permission --prefix=true "$r" readwrite "$p/endpoints/$h/"
    ctl role grant-permission --prefix=true "$r" readwrite "$p/wires/"
    ctl user add "$h" --no-password
    ctl user grant-role "$h" "$r"
    echo "host $h: may write $p/hosts/$h, $p/endpoints/$h/ and $p/wires/; reads $p/"
done
ctl user add root --no-password
ctl user grant-role root root
ctl auth enable
echo "authentication enabled"
