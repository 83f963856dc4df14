# The machine-configured Debian base every stand-in starts from (deploy/ci/compose_test.py).
# quiz-ci/debootstrap is `debootstrap --variant=minbase bookworm` imported with `docker import`.
# context/ is written by the script at run time: the machine's CA certificates and apt sources.
FROM quiz-ci/debootstrap:bookworm
COPY context/ca-certificates/ /usr/local/share/ca-certificates/
COPY context/apt/ /etc/apt/
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/*
