# The batchstream image: the installed package only (no tests, benches or work tree), run as
# a non-root user. `docker build -t batchstream .`; `docker run batchstream worker -c FILE`.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY streams streams
COPY agents agents
COPY providers providers
COPY sinks sinks
COPY ops ops
COPY emulator emulator
COPY devkafka devkafka
COPY demo demo
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="batchstream" \
      org.opencontainers.image.description="Faust agents that window Kafka events into micro-batches for LLM batch APIs, losing nothing." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 batchstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin batchstream
# faust's data dir and the windows' temporary files go to /tmp (mount an emptyDir there
# when the root filesystem is read-only)
WORKDIR /tmp
USER 10001:10001
ENV PYTHONUNBUFFERED=1
# /metrics, /healthz and /readyz (metrics_port in the configuration)
EXPOSE 9464
# The worker stops gracefully on SIGTERM: it lets create calls and emissions finish (up to
# 30 s), commits, and leaves the group. Give it more than that before a SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["batchstream"]
CMD ["worker", "-c", "/config/batchstream.yaml"]
