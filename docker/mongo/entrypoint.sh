#!/usr/bin/env bash
# Entry point of the `mongodb` service: makes sure the replica-set keyfile exists, then
# hands over to the image's own docker-entrypoint.sh (which drops to the mongodb user,
# runs the first-start init scripts and execs mongod).
#
# With authentication on, the members of a replica set -- even a replica set of one --
# authenticate to each other with a shared keyfile. It is generated here, on the first
# start, inside the `mongodb-config` volume, so it is never part of the repository or
# of an image. A second member added later needs a copy of this file.
set -Eeuo pipefail

keyfile=/data/configdb/replica-set.key
if [ ! -s "$keyfile" ]; then
    umask 077
    # 756 random bytes -> 1008 base64 characters: within mongod's 6..1024 limit and
    # only characters of the base64 set, as mongod requires.
    head -c 756 /dev/urandom | base64 -w 0 > "$keyfile.tmp"
    mv "$keyfile.tmp" "$keyfile"
    echo "selfplay: generated a new replica-set keyfile at $keyfile" >&2
fi
# mongod refuses a keyfile that group or others can read; docker-entrypoint.sh gives
# /data/configdb and its contents to the mongodb user before starting mongod.
chmod 400 "$keyfile"

exec docker-entrypoint.sh "$@"
