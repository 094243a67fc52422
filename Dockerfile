# The worker image: `loyalty worker` by default; the generator and the other CLI
# commands run from the same image (`docker compose run worker-1 loyalty ...`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# Exactly what `make demo` does to install the project: the Makefile's .installed
# target (creates .venv, then `pip install -e .`).
RUN make .venv/.installed

RUN useradd --system --uid 10001 --no-create-home --home-dir /app loyalty \
    && mkdir -p /var/lib/loyalty \
    && chown loyalty /var/lib/loyalty

ENV PATH=/app/.venv/bin:$PATH \
    LOYALTY_DATA_DIR=/var/lib/loyalty \
    WEB_PORT=6066

USER loyalty
EXPOSE 6066
CMD ["loyalty", "worker"]
