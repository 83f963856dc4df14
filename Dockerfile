# One image for every app process; docker-compose.yml picks the command. Runs as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only the runtime part of requirements.txt (the lines above its "# Embedded" heading): the
# embedded servers, test tools and load-test libraries stay out of the image. Dependencies come
# first, so a code change does not reinstall them.
COPY requirements.txt .
RUN sed '/^# Embedded/,$d' requirements.txt > /tmp/runtime.txt \
    && pip install -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt

# HAProxy fronts the realtime processes (the balancer service runs `python -m processes balancer`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --system --user-group --no-create-home --home-dir /app --shell /usr/sbin/nologin quiz
COPY . .
USER quiz

EXPOSE 8000 8001 5555
CMD ["gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"]
