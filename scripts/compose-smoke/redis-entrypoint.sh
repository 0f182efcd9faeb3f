#!/bin/sh
# As the official redis image does: protected mode off when redis-server runs without a configuration file
# (the container's network is the boundary; the API connects from another container).
if [ "$1" = redis-server ]; then
  set -- "$@" --protected-mode no
fi
exec "$@"
