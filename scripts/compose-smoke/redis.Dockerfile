# A local stand-in for the official redis image, which no registry here can provide: Debian's redis-server
# on the smoke test's Debian base, run the way the official image runs it (data in /data as user redis,
# protected mode off).
ARG BASE
# hadolint ignore=DL3006
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data \
    && chown redis:redis /data
# Executable in the repository (git keeps the mode), so in the image too.
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
# The user Debian's package made (its uid is whatever was free): the official image runs as this name too.
# hadolint ignore=DL3066
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
