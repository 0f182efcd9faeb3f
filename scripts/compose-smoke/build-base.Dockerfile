# The Dockerfile's build stages run on this local image (BUILD_IMAGE): the smoke test's Debian base plus
# the host's CA bundle as pip's `cert`, for hosts whose outgoing HTTPS is re-signed by a local CA. Only the
# build stages see it: the runtime stage starts from the plain base (RUNTIME_IMAGE) and copies nothing of
# it but the virtual environment, so the bundle never reaches the image that is run or published.
ARG BASE
# hadolint ignore=DL3006
FROM ${BASE}
COPY host-ca.pem /etc/ssl/certs/host-ca.pem
RUN printf '[global]\ncert = /etc/ssl/certs/host-ca.pem\n' > /etc/pip.conf
