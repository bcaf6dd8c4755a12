#!/usr/bin/env bash
# Health check of the `mongodb` service. Healthy means: this node is the writable
# primary of the replica set, so that the services that wait for it can write at once.
#
# On the very first start the replica set does not exist yet: the image's init phase
# runs mongod without --replSet (see create-app-user.js). This check then initiates the
# one-member set. rs.initiate is only called when the server answers NotYetInitialized,
# so running the check again, or on a set that already exists, changes nothing.
#
# The root credentials come from the container's environment and are passed to
# db.auth() inside the script, not on the command line, so `ps` does not show them.
set -Eeuo pipefail

# mongosh keeps logs and history under $HOME, which the image sets to the data
# directory; the check runs as root and must not leave root-owned files there.
export HOME=/tmp

exec mongosh --quiet --norc --host 127.0.0.1 --port 27017 admin --eval '
const root = process.env.MONGO_INITDB_ROOT_USERNAME;
const password = process.env.MONGO_INITDB_ROOT_PASSWORD;
db.getSiblingDB("admin").auth(root, password);
try {
    rs.status();
} catch (error) {
    if (error.codeName !== "NotYetInitialized") { throw error; }
    rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongodb:27017" }] });
}
if (!db.hello().isWritablePrimary) { quit(1); }
'
