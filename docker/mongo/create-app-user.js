// First-start init script of the `mongodb` service (mounted into
// /docker-entrypoint-initdb.d). The image runs it once, when the data volume is empty,
// against a temporary mongod without authentication and without --replSet; the users
// it creates are kept when mongod restarts as a replica-set member.
//
// It creates the account the selfplay workers and the dashboard use: readWrite on the
// `selfplay` database only, authenticated against that database
// (SELFPLAY_MONGODB_URI=...?authSource=selfplay). The root account stays for
// administration and backups.
const user = process.env.MONGO_APP_USERNAME;
const password = process.env.MONGO_APP_PASSWORD;
if (!user || !password) {
    throw new Error("MONGO_APP_USERNAME and MONGO_APP_PASSWORD must both be set");
}
db.getSiblingDB("selfplay").createUser({
    user: user,
    pwd: password,
    roles: [{ role: "readWrite", db: "selfplay" }],
});
print(`selfplay: created user ${user} with readWrite on database selfplay`);
