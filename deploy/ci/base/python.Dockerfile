# Stand-in for python:3.11-slim: Debian's python3 (3.11) in a venv on PATH, so `python` and `pip`
# behave as in the official image (a pip install needs no --break-system-packages).
FROM quiz-ci/common:bookworm
COPY context/pip.conf /etc/pip.conf
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python
ENV PATH=/usr/local/python/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
