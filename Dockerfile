# One image, four commands: python -m services.{router,llm,threads,ledger}
# (and python -m services.offline_openai for the optional offline upstream).
#   docker build -t coach-suite:0.1.0 .
#   docker run --rm -p 50051:50051 coach-suite:0.1.0 python -m services.router
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COACH_DATA_DIR=/var/lib/coach

WORKDIR /app

# Dependencies first (cached while only the code changes). pgserver, the embedded
# PostgreSQL that `make up` uses on a laptop, is left out: containers use DATABASE_URL.
COPY requirements.txt ./
RUN grep -v '^pgserver' requirements.txt > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY pyproject.toml ./
COPY gen ./gen
COPY services ./services
RUN pip install --no-deps . \
 && groupadd --system --gid 10001 coach \
 && useradd --system --uid 10001 --gid coach --home-dir /var/lib/coach --create-home coach \
 && install -d -o coach -g coach -m 700 /var/lib/coach/router-journal
# The router's journal of answers not yet stored in threads: mount a volume there
# (docker-compose.yml does) so a recreated container sends what its predecessor left.

USER 10001:10001
EXPOSE 50051 50052 50053 50054 9151 9152 9153 9154
# Health: `python -m services.suite healthcheck 127.0.0.1:<port>` (grpc.health.v1), set per
# service in docker-compose.yml; Kubernetes uses its native gRPC probes.
CMD ["python", "-m", "services.router"]
