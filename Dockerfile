# One image for every app process; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

RUN useradd --system --user-group --no-create-home --home-dir /app quiz
COPY . .
USER quiz

EXPOSE 8000 8001 5555
CMD ["gunicorn", "-c", "web/gunicorn_conf.py", "web.wsgi:app"]
