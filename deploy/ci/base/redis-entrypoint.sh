#!/bin/sh
# As the official redis image: started as root, own /data and drop to the redis user.
set -e
if [ "$(id -u)" = 0 ]; then
    chown -R redis:redis /data
    exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
