#!/bin/sh
# Runs once, when the postgres container starts on an empty volume (the image's
# /docker-entrypoint-initdb.d convention). Two roles, neither a superuser:
#   quiz      owns the database and its schema; `migrate` connects as it.
#   quiz_app  what the app services connect as: reads and writes rows, creates nothing, and cannot
#             disable a trigger, so the audit log's append-only trigger binds it.
# To change a password later: ALTER ROLE ... PASSWORD ... as postgres (docs/operations.md).
set -eu
: "${OWNER_DB_PASSWORD:?}" "${APP_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v owner_pw="$OWNER_DB_PASSWORD" -v app_pw="$APP_DB_PASSWORD" <<'SQL'
CREATE ROLE quiz LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_pw';
CREATE ROLE quiz_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_pw';
CREATE DATABASE quiz OWNER quiz;
REVOKE ALL ON DATABASE quiz FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE quiz TO quiz_app;
\connect quiz
ALTER SCHEMA public OWNER TO quiz;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO quiz_app;
-- Every table and sequence the migrations create (as quiz) is usable by the app, and no more.
ALTER DEFAULT PRIVILEGES FOR ROLE quiz IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO quiz_app;
ALTER DEFAULT PRIVILEGES FOR ROLE quiz IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO quiz_app;
ALTER DEFAULT PRIVILEGES FOR ROLE quiz IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO quiz_app;
SQL
